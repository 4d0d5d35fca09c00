"""Lightning DataModule shared by every method: same images, same order, same test indexing.

Why: methods must be compared on identical inputs, so loading, resizing and the test order live
here once. Images are float tensors in [0, 1] without normalisation (each method normalises
inside its own model). Ground-truth masks stay at their original resolution: the evaluator
upsamples maps to them, so ``load_mask(i)`` returns the mask of ``test_samples[i]`` unresized.

What a method may use beyond its batches is declared once: `AnomalyDataModule`'s docstring.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable, Iterator, NamedTuple

import lightning as L
import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset, Sampler

from anobench.config import BUILTIN_DATASETS
from anobench.data.layouts import DATASET_CATEGORIES, DATASET_TITLES, index_dataset
from anobench.data.mvtec import CategoryIndex, Sample, check_decodable, image_size, load_image, load_mask, resolve_root
from anobench.data.synthetic import SYNTHETIC_CATEGORIES, ensure_synthetic
from anobench.errors import ConfigError

__all__ = ["AnomalyDataModule", "AUGMENT_KEYS", "DEFAULT_SYNTHETIC_ROOT", "DataIdentity", "INTERPOLATIONS", "input_pixels", "input_tensor"]

DATASETS = ("mvtec", "synthetic", "mpdd", "btad", "visa", "folder")
# data=folder's layout options when not given (as conf/data_base/folder.yaml sets them)
FOLDER_DEFAULTS = {"normal_dir": "good", "mask_dir": "ground_truth", "mask_suffix": "_mask"}
AUGMENT_KEYS = ("hflip", "vflip", "rotate90", "color_jitter")
SYNTHETIC_KEYS = ("seed", "image_size", "n_train", "n_test_good", "n_test_per_defect")
DEFAULT_SYNTHETIC_ROOT = Path("data") / "synthetic"


class DataIdentity(NamedTuple):
    """Which images a datamodule serves, as configured: what a per-category cache keys on."""

    dataset: str
    category: str
    root: str | None
    image_size: int
    interpolation: str = "bilinear"

    def key(self) -> str:
        """``dataset:category:root:image_size`` (the Uninformed Students teacher cache's data key), with
        ``:interpolation`` appended when it is not the default bilinear (keys written before it existed hold)."""
        values = self if self.interpolation != "bilinear" else self[:-1]
        return ":".join(str(value) for value in values)


# data.interpolation (a method's `input.interpolation`): the Pillow filter that resizes images to the input size
INTERPOLATIONS = {"bilinear": Image.BILINEAR, "bicubic": Image.BICUBIC, "nearest": Image.NEAREST}


def input_pixels(image: Image.Image, size: int, interpolation: str = "bilinear") -> np.ndarray:
    """An RGB image (`anobench.data.mvtec.load_image`) as a method sees it: resized to size×size with Pillow's
    `interpolation` filter (unless it already is that size) as 3×S×S uint8. Every loader and `anobench predict`
    convert images with this."""
    if image.size != (size, size):
        image = image.resize((size, size), INTERPOLATIONS[interpolation])
    return np.ascontiguousarray(np.asarray(image, dtype=np.uint8).transpose(2, 0, 1))


def input_tensor(pixels: np.ndarray) -> torch.Tensor:
    """`input_pixels` (3×S×S, or stacked N×3×S×S) as the float tensor in [0, 1] a method's model reads."""
    return torch.from_numpy(pixels).float().div_(255.0)


def _augment(image: torch.Tensor, augment: dict[str, Any], seed: int) -> torch.Tensor:
    """Light, label-free augmentation driven by a per-draw seed (independent of workers)."""
    g = torch.Generator().manual_seed(seed)
    if augment.get("hflip") and torch.rand((), generator=g) < 0.5:
        image = image.flip(-1)
    if augment.get("vflip") and torch.rand((), generator=g) < 0.5:
        image = image.flip(-2)
    if augment.get("rotate90"):
        k = int(torch.randint(0, 4, (), generator=g))
        image = torch.rot90(image, k, dims=(-2, -1))
    strength = float(augment.get("color_jitter") or 0.0)
    if strength > 0:
        b, c, s = (1.0 + strength * (2 * torch.rand(3, generator=g) - 1)).tolist()
        image = image * b
        mean = image.mean()
        image = mean + (image - mean) * c
        grey = (0.299 * image[0] + 0.587 * image[1] + 0.114 * image[2]).unsqueeze(0)
        image = grey + (image - grey) * s
        image = image.clamp(0.0, 1.0)
    return image.contiguous()


class _ImageDataset(Dataset):
    """Samples → resized float images; resized uint8 copies are cached (repeats are cheap)."""

    def __init__(
        self,
        samples: list[Sample],
        size: int,
        augment: dict[str, Any] | None = None,
        with_label: bool = False,
        interpolation: str = "bilinear",
    ) -> None:
        self.samples = samples
        self.size = size
        self.interpolation = interpolation
        self.augment = augment
        self.with_label = with_label
        self._cache: dict[int, np.ndarray] = {}

    def __len__(self) -> int:
        return len(self.samples)

    def _pixels(self, i: int) -> np.ndarray:
        pixels = self._cache.get(i)
        if pixels is None:
            pixels = input_pixels(load_image(self.samples[i].image_path), self.size, self.interpolation)
            self._cache[i] = pixels
        return pixels

    def __getitem__(self, item: int | tuple[int, int]) -> dict[str, Any]:
        i, aug_seed = item if isinstance(item, tuple) else (item, None)
        image = input_tensor(self._pixels(i))
        if self.augment and aug_seed is not None:
            image = _augment(image, self.augment, aug_seed)
        out: dict[str, Any] = {"image": image}
        if self.with_label:
            out["label"] = self.samples[i].label
        out["index"] = i
        return out


class _KeptTrainImages(Dataset):
    """The training set without some images (`AnomalyDataModule.exclude_from_training`); items are
    positions in the kept list, each batch element carries its original training-set "index"."""

    def __init__(self, dataset: _ImageDataset, keep: list[int]) -> None:
        self.dataset = dataset
        self.keep = keep

    def __len__(self) -> int:
        return len(self.keep)

    def __getitem__(self, item: int | tuple[int, int]) -> dict[str, Any]:
        i, aug_seed = item if isinstance(item, tuple) else (item, None)
        index = self.keep[i]
        out = self.dataset[(index, aug_seed) if aug_seed is not None else index]
        out["index"] = index
        return out


class _TrainIndices(Dataset):
    """Training-set indices without pixels (`AnomalyDataModule.train_indices_only`): items of the
    wrapped training dataset map to {"index": training-set index}, nothing is loaded or copied."""

    def __init__(self, indices: list[int]) -> None:
        self.indices = indices

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, item: int | tuple[int, int]) -> dict[str, Any]:
        return {"index": self.indices[item[0] if isinstance(item, tuple) else item]}


class _RepeatShuffleSampler(Sampler):
    """Each epoch: ``repeats`` seeded permutations of the dataset, each draw with an augment seed.

    The permutation depends only on (seed, epoch), so the batch order is reproducible and does
    not depend on global RNG state or on the number of workers.
    """

    def __init__(self, n: int, repeats: int, seed: int) -> None:
        self.n, self.repeats, self.seed = n, repeats, seed
        self.epoch = 0

    def __len__(self) -> int:
        return self.n * self.repeats

    def __iter__(self) -> Iterator[tuple[int, int]]:
        g = torch.Generator().manual_seed(int(self.seed) * 1_000_003 + self.epoch)
        self.epoch += 1
        order = torch.cat([torch.randperm(self.n, generator=g) for _ in range(self.repeats)])
        aug_seeds = torch.randint(0, 2**31 - 1, (len(order),), generator=g)
        return iter(zip(order.tolist(), aug_seeds.tolist()))


def _known_keys(name: str, given: dict | None, allowed: tuple[str, ...] | list[str]) -> dict:
    """A copy of `given` (None = empty); ConfigError naming `name` if it holds keys outside `allowed`."""
    given = dict(given or {})
    unknown = sorted(set(given) - set(allowed))
    if unknown:
        raise ConfigError(f"{name} has unknown key(s) {', '.join(unknown)}; expected some of: {', '.join(allowed)}")
    return given


def _check_category(dataset: str, category: Any) -> None:
    """A category outside a benchmark's own list would be averaged into its Mean: refuse it, pointing to data=folder."""
    if dataset == "folder":
        if not isinstance(category, str) or not category:
            raise ConfigError(f"data.category={category!r} is invalid; expected a name for your dataset's category "
                              "(conf/data/folder.yaml: the root folder's name by default)")
        return
    if dataset == "synthetic":
        if category not in SYNTHETIC_CATEGORIES:
            raise ConfigError(f"data.category='{category}' is not a synthetic category; expected one of: "
                              f"{', '.join(SYNTHETIC_CATEGORIES)}")
        return
    categories = DATASET_CATEGORIES[dataset]
    if category not in categories:
        title = DATASET_TITLES[dataset]
        quoted = " (quote it: data.category='\"01\"' or use data=btad/01)" if isinstance(category, int) else ""
        raise ConfigError(
            f"data.category={category!r} is not a {title} category{quoted}; expected one of: {', '.join(categories)}. "
            f"For your own images (also in {title}'s folder layout) use data=folder data.root=<folder> "
            f"(docs/usage.md, \"Your own dataset\"): they get their own leaderboard section instead of entering "
            f"the {title} Mean")


def _check_name(name: Any) -> str:
    """data=folder's dataset name (its leaderboard section); a built-in dataset's name would mix the two."""
    if name is None or name == "":
        return "custom"
    if not isinstance(name, str):
        raise ConfigError(f"data.name={name!r} is invalid; expected a name for your dataset, e.g. data.name=screws")
    if name.strip().lower() in BUILTIN_DATASETS:
        raise ConfigError(f"data.name='{name}' is the name of a built-in dataset ({', '.join(BUILTIN_DATASETS)}); "
                          "name your own dataset otherwise, so that its results never enter that dataset's Mean")
    return name


def _check_holdout(value: Any) -> None:
    ok = (isinstance(value, int) and not isinstance(value, bool) and value >= 0) or (
        isinstance(value, float) and 0.0 <= value < 1.0)
    if not ok:
        raise ConfigError(f"data.holdout_normal={value!r} is invalid; expected a fraction in [0, 1) or a count >= 0 "
                          "of the train/good images to hold out of training (0 = none, the papers' protocol)")


def holdout_indices(n_train: int, holdout: int | float, seed: int) -> list[int]:
    """The train/good indices that `data.holdout_normal` holds out (sorted; a seeded draw, the same for a run's
    seed): a count, or a fraction of `n_train` (at least one image). At least one training image must remain."""
    _check_holdout(holdout)
    k = int(holdout) if isinstance(holdout, int) else max(1, round(float(holdout) * n_train)) if holdout else 0
    if k == 0:
        return []
    if k >= n_train:
        raise ConfigError(f"data.holdout_normal={holdout!r} holds out {k} of the {n_train} training images; "
                          "at least one must remain for training")
    return sorted(np.random.default_rng(seed).permutation(n_train)[:k].tolist())


class AnomalyDataModule(L.LightningDataModule):
    """A category of MVTec AD, MPDD, BTAD, VisA, a synthetic one or your own folder as train / inference-train /
    test loaders (each release read as it lays out its files: anobench/data/layouts.py).

    What a method may use beyond batches: its LightningModule reaches the datamodule through
    ``AnomalyModule.data()`` (an `AnomalyDataModule`, checked) and uses only this declared interface, never
    attributes probed with hasattr/getattr:

        training_images()            the whole training set, un-augmented, in index order (N×3×S×S in [0, 1])
        inference_train_dataloader() the same images in batches with their "index" (memory banks, statistics)
        test_dataloader()            the test images in ``test_samples`` order with "label" and "index"
        test_samples, load_mask(i)   the test samples and the ground truth of test image i
        holdout_samples              train/good images held out (``holdout_normal``): never in the training
        holdout_dataloader()         images above; scored after the test for decision thresholds
        exclude_from_training(ids)   never train on these training images (held-out validation images)
        train_indices_only(enabled)  training batches carry only "index" (a method keeping its own copy)
        identity                     `DataIdentity` (dataset, category, root, image_size, interpolation): what the data is, e.g.
                                     what a per-category cache keys on
        augment, image_size          the training augmentation ({} = none) and the square input size
        dataset, category, synthetic the configured source (the synthetic generator's settings, {} for MVTec)
        has_masks                    whether the defective test images have pixel ground truth (False: your own
                                     data without masks; load_mask(i) is then all False, pixel metrics are skipped)

    Who uses what: Patch SVDD keeps ``training_images()`` and turns on ``train_indices_only`` (without
    ``augment``); Uninformed Students holds validation images out (``exclude_from_training``) and keys its
    teacher cache on ``identity``; NBS builds its labelled split from the test loader, ``test_samples``,
    ``load_mask``, ``training_images()`` and the synthetic settings; SynthCP fits its layout on
    ``inference_train_dataloader()``. Every attribute is set in ``__init__``; the two training modes above
    are the only state a method changes, each undone by calling it again (``exclude_from_training([])``,
    ``train_indices_only(False)``).
    """

    def __init__(
        self,
        *,
        dataset: str,
        category: str,
        root: str | None = None,
        image_size: int = 256,
        train_batch_size: int = 32,
        eval_batch_size: int = 16,
        num_workers: int = 0,
        train_repeats: int = 1,
        augment: dict | None = None,
        synthetic: dict | None = None,
        seed: int = 0,
        holdout_normal: int | float = 0,
        name: str | None = None,
        normal_dir: str | None = None,
        mask_dir: str | None = None,
        mask_suffix: str | None = None,
        interpolation: str = "bilinear",
    ) -> None:
        super().__init__()
        if dataset not in DATASETS:
            raise ConfigError(f"data.dataset='{dataset}' is not supported; expected one of: {', '.join(DATASETS)}")
        _check_category(dataset, category)
        folder_options = {"normal_dir": normal_dir, "mask_dir": mask_dir, "mask_suffix": mask_suffix}
        if dataset == "folder":
            name = _check_name(name)
            folder_options = {k: FOLDER_DEFAULTS[k] if v is None else v for k, v in folder_options.items()}
        else:
            given = [f"data.{k}" for k, v in {"name": name, **folder_options}.items() if v is not None]
            if given:
                raise ConfigError(f"{', '.join(given)} only apply to data=folder (your own dataset); data.dataset="
                                  f"'{dataset}' is read as its release lays out its files")
            folder_options = {}
        for key, value, low in (
            ("image_size", image_size, 8),
            ("train_batch_size", train_batch_size, 1),
            ("eval_batch_size", eval_batch_size, 1),
            ("num_workers", num_workers, 0),
            ("train_repeats", train_repeats, 1),
        ):
            if not isinstance(value, int) or isinstance(value, bool) or value < low:
                raise ConfigError(f"data.{key}={value!r} is invalid; expected an integer >= {low}")
        augment = _known_keys("data.augment", augment, AUGMENT_KEYS)
        jitter = augment.get("color_jitter") or 0.0
        if not isinstance(jitter, (int, float)) or not 0.0 <= float(jitter) < 1.0:
            raise ConfigError(f"data.augment.color_jitter={jitter!r} is invalid; expected a number in [0, 1)")
        synthetic = _known_keys("data.synthetic", synthetic, SYNTHETIC_KEYS)
        if interpolation not in INTERPOLATIONS:
            raise ConfigError(f"data.interpolation={interpolation!r} is invalid (set by the method's "
                              f"input.interpolation); expected one of: {', '.join(INTERPOLATIONS)}")
        _check_holdout(holdout_normal)
        self.dataset = dataset
        self.category = category
        self.root = root
        self.image_size = image_size
        self.interpolation = interpolation
        self.train_batch_size = train_batch_size
        self.eval_batch_size = eval_batch_size
        self.num_workers = num_workers
        self.train_repeats = train_repeats
        self.augment = {k: v for k, v in augment.items() if v}
        self.synthetic = synthetic
        self.seed = int(seed)
        self.holdout_normal = holdout_normal
        self.name = name  # data=folder: the dataset's name (its leaderboard section); None otherwise
        self.folder_options = folder_options  # data=folder: normal_dir, mask_dir, mask_suffix; {} otherwise
        self.holdout_samples: list[Sample] = []  # setup(): train/good images held out of training (holdout_normal)
        self.index: CategoryIndex | None = None
        self._datasets: dict[str, _ImageDataset] = {}
        self._train_sampler: _RepeatShuffleSampler | None = None
        self.train_exclude: frozenset[int] = frozenset()  # exclude_from_training(): never yielded for training
        self.indices_only = False  # True after train_indices_only(): training batches carry "index" only

    @property
    def identity(self) -> DataIdentity:
        """The configured source and input size (not the location of a synthetic root's generated files)."""
        return DataIdentity(self.dataset, self.category, self.root, self.image_size, self.interpolation)

    # --- setup -------------------------------------------------------------------------------
    @property
    def has_masks(self) -> bool:
        """Whether the defective test images have pixel ground truth (indexes the category on first use)."""
        return any(s.mask_path is not None for s in self.test_samples if s.label)

    def _root(self) -> Path:
        if self.dataset == "synthetic":
            return Path(self.root).expanduser() if self.root else DEFAULT_SYNTHETIC_ROOT
        return resolve_root(self.root, self.dataset)

    def setup(self, stage: str | None = None) -> None:
        """Index the category once (generating a synthetic one on first use)."""
        if self.index is not None:
            return
        root = self._root()
        if self.dataset == "synthetic":
            ensure_synthetic(root, self.category, **self.synthetic)
        index = index_dataset(self.dataset, root, self.category, **self.folder_options)
        check_decodable(index)
        held = set(holdout_indices(len(index.train), self.holdout_normal, self.seed))
        if held:
            self.holdout_samples = [s for i, s in enumerate(index.train) if i in held]
            kept = [s for i, s in enumerate(index.train) if i not in held]
            index = CategoryIndex(root=index.root, category=index.category, train=kept, test=index.test)
        self.index = index

    def _require_index(self) -> CategoryIndex:
        if self.index is None:
            self.setup()
        assert self.index is not None
        return self.index

    def _dataset(self, name: str) -> _ImageDataset:
        ds = self._datasets.get(name)
        if ds is None:
            index = self._require_index()
            if name == "train":
                ds = _ImageDataset(index.train, self.image_size, augment=self.augment, interpolation=self.interpolation)
            elif name == "inference_train":
                ds = _ImageDataset(index.train, self.image_size, interpolation=self.interpolation)
            else:
                ds = _ImageDataset(index.test, self.image_size, with_label=True, interpolation=self.interpolation)
            self._datasets[name] = ds
        return ds

    def _loader(self, dataset: Dataset, batch_size: int, **kwargs: Any) -> DataLoader:
        return DataLoader(
            dataset,
            batch_size=batch_size,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
            pin_memory=self._on_cuda(),  # page-locked batches: faster, asynchronous host-to-GPU copies
            drop_last=False,
            **kwargs,
        )

    def _on_cuda(self) -> bool:
        """Whether the attached trainer runs on a CUDA device (pinning host memory helps only then)."""
        trainer = getattr(self, "trainer", None)
        root = getattr(getattr(trainer, "strategy", None), "root_device", None)
        return getattr(root, "type", None) == "cuda"

    # --- loaders -----------------------------------------------------------------------------
    def exclude_from_training(self, indices: Iterable[int]) -> None:
        """Never yield these training images (indices into the training set, e.g. a method's held-out
        validation images) from train_dataloader(), whose batches then carry "index". Call before
        train_dataloader() (a LightningModule's on_fit_start is)."""
        self.train_exclude = frozenset(int(i) for i in indices)
        self._train_sampler = None

    def train_indices_only(self, enabled: bool = True) -> None:
        """Make train_dataloader() yield only "index" (same order, same batches), no "image": for a
        method that keeps its own copy of the training images and crops from it (Patch SVDD), so
        64 full images are not decoded from cache, converted and collated every step. Only without
        augmentation — an augmented draw is a new image. Call before train_dataloader();
        ``enabled=False`` brings the images back (the method does at fit end)."""
        if enabled and self.augment:
            raise ConfigError(
                f"data.augment={self.augment} makes every training draw a new image; train_indices_only() "
                "needs data.augment=null"
            )
        self.indices_only = bool(enabled)

    def train_dataloader(self) -> DataLoader:
        """Shuffled (seeded) training images, repeated ``train_repeats`` times per epoch; batches carry
        "image" and "index" (the training-set index, e.g. for per-image caches of a method), or only
        "index" after train_indices_only()."""
        ds = self._dataset("train")
        if self.train_exclude:
            ds = _KeptTrainImages(ds, [i for i in range(len(ds)) if i not in self.train_exclude])
        if self.indices_only:
            ds = _TrainIndices(ds.keep if isinstance(ds, _KeptTrainImages) else list(range(len(ds))))
        if self._train_sampler is None:
            self._train_sampler = _RepeatShuffleSampler(len(ds), self.train_repeats, self.seed)
        return self._loader(
            ds,
            self.train_batch_size,
            sampler=self._train_sampler,
            generator=torch.Generator().manual_seed(self.seed),
        )

    def inference_train_dataloader(self) -> DataLoader:
        """Training images in index order, un-augmented: for memory banks / statistics."""
        return self._loader(self._dataset("inference_train"), self.eval_batch_size, shuffle=False)

    def training_images(self) -> torch.Tensor:
        """The whole training set, un-augmented, in index order, as one new N×3×S×S float tensor in [0, 1]
        (the batches of inference_train_dataloader() concatenated; the caller owns it)."""
        return torch.cat([batch["image"] for batch in self.inference_train_dataloader()])

    def test_dataloader(self) -> DataLoader:
        """Test images in ``test_samples`` order with their label and index."""
        return self._loader(self._dataset("test"), self.eval_batch_size, shuffle=False)

    def holdout_dataloader(self) -> DataLoader:
        """The normal training images held out of training (``holdout_normal``), in ``holdout_samples`` order,
        un-augmented, with their "index" into that list; empty without a holdout."""
        self._require_index()
        return self._loader(_ImageDataset(self.holdout_samples, self.image_size, interpolation=self.interpolation), self.eval_batch_size, shuffle=False)

    # --- evaluation helpers ------------------------------------------------------------------
    @property
    def test_samples(self) -> list[Sample]:
        """Test samples; batch["index"] indexes this list."""
        return self._require_index().test

    def load_mask(self, i: int) -> np.ndarray:
        """Bool H×W ground truth of test image i at its original resolution (all False if good)."""
        sample = self.test_samples[i]
        width, height = image_size(sample.image_path)
        if sample.mask_path is None:
            return np.zeros((height, width), dtype=bool)
        return load_mask(sample.mask_path, expected_size=(width, height))
