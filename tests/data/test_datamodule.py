"""AnomalyDataModule: batch contents, index mapping, masks at original size, repeats, determinism."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from anobench.data import AnomalyDataModule, generate_category
from anobench.errors import AnobenchError, ConfigError, DataError

SYN = dict(seed=1, image_size=64, n_train=5, n_test_good=3, n_test_per_defect=2)


@pytest.fixture(scope="module")
def syn_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("syn_dm")
    generate_category(root, "tablet", **SYN)
    return root


def _dm(root: Path, **kwargs) -> AnomalyDataModule:
    args = dict(dataset="synthetic", category="tablet", root=str(root), image_size=32, train_batch_size=4,
                eval_batch_size=3, synthetic=SYN)
    args.update(kwargs)
    return AnomalyDataModule(**args)


def test_batches_shapes_dtypes_ranges(syn_root: Path) -> None:
    dm = _dm(syn_root)
    dm.setup("fit")
    index = dm.index
    dm.setup("test")
    assert dm.index is index, "setup must be idempotent"
    train = list(dm.train_dataloader())
    assert set(train[0]) == {"image", "index"}
    assert train[0]["image"].shape == (4, 3, 32, 32) and train[0]["image"].dtype == torch.float32
    assert sum(b["image"].shape[0] for b in train) == 5  # drop_last=False
    test = list(dm.test_dataloader())
    assert set(test[0]) == {"image", "label", "index"}
    images = torch.cat([b["image"] for b in test])
    labels = torch.cat([b["label"] for b in test])
    indices = torch.cat([b["index"] for b in test])
    assert images.shape == (3 + 4 * 2, 3, 32, 32)
    assert 0.0 <= float(images.min()) and float(images.max()) <= 1.0 and float(images.max()) > 0.5
    assert labels.dtype == torch.long and indices.dtype == torch.long
    assert indices.tolist() == list(range(len(dm.test_samples)))
    assert labels.tolist() == [s.label for s in dm.test_samples]
    inference = list(dm.inference_train_dataloader())
    assert set(inference[0]) == {"image", "index"}
    assert torch.cat([b["index"] for b in inference]).tolist() == list(range(5))


def test_index_maps_to_the_right_image(syn_root: Path) -> None:
    dm = _dm(syn_root, image_size=64)  # native size: no resize, exact pixels
    dm.setup()
    batch = next(iter(dm.test_dataloader()))
    for row, i in enumerate(batch["index"].tolist()):
        expected = np.asarray(Image.open(dm.test_samples[i].image_path), dtype=np.float32) / 255.0
        assert np.allclose(batch["image"][row].permute(1, 2, 0).numpy(), expected, atol=1e-6)


def test_load_mask_original_resolution(syn_root: Path) -> None:
    dm = _dm(syn_root, image_size=32)
    dm.setup()
    for i, sample in enumerate(dm.test_samples):
        mask = dm.load_mask(i)
        assert mask.dtype == bool and mask.shape == (64, 64)  # not the 32×32 model size
        assert mask.any() == bool(sample.label)
        if sample.mask_path is not None:
            assert np.array_equal(mask, np.asarray(Image.open(sample.mask_path)) > 0)


def test_train_repeats_and_deterministic_order(syn_root: Path) -> None:
    def epoch_images(seed: int, epochs: int = 2) -> list[torch.Tensor]:
        dm = _dm(syn_root, train_repeats=3, seed=seed, train_batch_size=4)
        dm.setup()
        loader = dm.train_dataloader()
        assert len(loader.sampler) == 15 and len(loader) == 4
        return [torch.cat([b["image"] for b in loader]) for _ in range(epochs)]

    first, again, other = epoch_images(0), epoch_images(0), epoch_images(7)
    assert first[0].shape[0] == 15
    assert all(torch.equal(a, b) for a, b in zip(first, again)), "same seed must give the same order"
    assert not torch.equal(first[0], other[0]), "another seed should give another order"
    assert not torch.equal(first[0], first[1]), "epochs should be reshuffled"
    # every training image appears exactly train_repeats times per epoch
    flat = first[0].flatten(1)
    reference = torch.cat([b["image"] for b in _dm(syn_root).inference_train_dataloader()]).flatten(1)
    counts = [(flat == ref).all(dim=1).sum().item() for ref in reference]
    assert counts == [3] * 5


def test_augmentation_is_train_only_and_seeded(syn_root: Path) -> None:
    augment = {"hflip": True, "vflip": True, "rotate90": True, "color_jitter": 0.2}
    plain = torch.cat([b["image"] for b in _dm(syn_root, seed=3).train_dataloader()])
    augmented = torch.cat([b["image"] for b in _dm(syn_root, seed=3, augment=augment).train_dataloader()])
    again = torch.cat([b["image"] for b in _dm(syn_root, seed=3, augment=augment).train_dataloader()])
    assert not torch.equal(plain, augmented) and torch.equal(augmented, again)
    assert 0.0 <= float(augmented.min()) and float(augmented.max()) <= 1.0
    dm = _dm(syn_root, augment=augment)
    inference = torch.cat([b["image"] for b in dm.inference_train_dataloader()])
    assert torch.equal(inference, torch.cat([b["image"] for b in _dm(syn_root).inference_train_dataloader()]))


def test_train_indices_only_keeps_the_batches_without_pixels(syn_root: Path) -> None:
    def batches(indices_only: bool, exclude=()) -> list[dict]:
        dm = _dm(syn_root, train_repeats=3, seed=5)
        dm.exclude_from_training(exclude)
        if indices_only:
            dm.train_indices_only()
        return list(dm.train_dataloader())

    for exclude in ((), (1, 3)):
        with_images, indices = batches(False, exclude), batches(True, exclude)
        assert all(set(b) == {"index"} for b in indices)
        # same order and batching as the image batches, training-set indices (excluded ones never)
        assert [b["index"].tolist() for b in indices] == [b["index"].tolist() for b in with_images]
        assert not set(torch.cat([b["index"] for b in indices]).tolist()) & set(exclude)
    dm = _dm(syn_root)
    dm.train_indices_only()
    dm.train_indices_only(False)
    assert set(next(iter(dm.train_dataloader()))) == {"image", "index"}
    with pytest.raises(ConfigError, match="data.augment"):
        _dm(syn_root, augment={"hflip": True}).train_indices_only()


def test_the_interface_a_method_uses_beyond_batches(syn_root: Path) -> None:
    """Declared in __init__ (nothing to probe for), the training set as one tensor, the identity a cache keys on."""
    dm = _dm(syn_root)
    assert dm.train_exclude == frozenset() and dm.indices_only is False and dm.augment == {}
    images = dm.training_images()
    assert images.shape == (5, 3, 32, 32) and images.dtype == torch.float32
    assert torch.equal(images, torch.cat([b["image"] for b in dm.inference_train_dataloader()]))
    assert dm.training_images() is not images  # a new tensor per call: the caller may change it in place
    assert dm.identity == ("synthetic", "tablet", str(syn_root), 32, "bilinear")
    assert dm.identity.key() == f"synthetic:tablet:{syn_root}:32"  # the default filter keeps the keys written before it
    dm.exclude_from_training([1, 3])
    dm.exclude_from_training([])  # undone: every training image again
    assert sorted(torch.cat([b["index"] for b in dm.train_dataloader()]).tolist()) == list(range(5))


def test_synthetic_generated_on_setup(tmp_path: Path) -> None:
    dm = _dm(tmp_path / "fresh", category="weave",
             synthetic=dict(seed=0, image_size=48, n_train=2, n_test_good=1, n_test_per_defect=1))
    dm.setup()
    assert (tmp_path / "fresh" / "weave" / "train" / "good" / "001.png").is_file()
    assert len(dm.index.train) == 2 and len(dm.test_samples) == 1 + 4


def test_mvtec_dataset_uses_root_or_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, syn_root: Path) -> None:
    monkeypatch.delenv("ANOBENCH_MVTEC_ROOT", raising=False)
    with pytest.raises(DataError, match="ANOBENCH_MVTEC_ROOT"):
        AnomalyDataModule(dataset="mvtec", category="bottle").setup()
    (tmp_path / "bottle").symlink_to(syn_root / "tablet")  # any MVTec-layout folder named like an MVTec category
    monkeypatch.setenv("ANOBENCH_MVTEC_ROOT", str(tmp_path))
    dm = AnomalyDataModule(dataset="mvtec", category="bottle", image_size=32)
    dm.setup()
    assert dm.index.root == tmp_path and len(dm.index.train) == 5 and dm.has_masks
    with pytest.raises(DataError, match="tablet"):  # lists existing categories
        AnomalyDataModule(dataset="mvtec", category="cable", root=str(syn_root)).setup()
    with pytest.raises(ConfigError, match="data=folder data.root=<folder>"):  # never averaged into MVTec's Mean
        AnomalyDataModule(dataset="mvtec", category="tablet", root=str(syn_root))


@pytest.mark.parametrize(
    ("kwargs", "key"),
    [
        (dict(dataset="imagenet"), "data.dataset='imagenet'"),
        (dict(category="marble"), "data.category='marble'"),
        (dict(augment={"shear": 0.1}), "shear"),
        (dict(augment={"color_jitter": 2.0}), "color_jitter"),
        (dict(synthetic={"n_trian": 3}), "n_trian"),
        (dict(train_repeats=0), "data.train_repeats=0"),
    ],
)
def test_config_errors_name_the_key(tmp_path: Path, kwargs: dict, key: str) -> None:
    with pytest.raises(ConfigError) as info:
        _dm(tmp_path, **kwargs)
    assert key in str(info.value)
    assert issubclass(ConfigError, AnobenchError)


def test_workers_are_respected(syn_root: Path) -> None:
    dm = _dm(syn_root, num_workers=0)
    loader = dm.test_dataloader()
    assert loader.num_workers == 0 and not loader.persistent_workers
    dm = _dm(syn_root, num_workers=1)
    loader = dm.train_dataloader()
    assert loader.num_workers == 1 and loader.persistent_workers


def test_worker_processes_give_the_same_batches(syn_root: Path) -> None:
    augment = {"hflip": True, "color_jitter": 0.1}
    in_process = torch.cat([b["image"] for b in _dm(syn_root, seed=5, augment=augment).train_dataloader()])
    with_worker = torch.cat(
        [b["image"] for b in _dm(syn_root, seed=5, augment=augment, num_workers=1).train_dataloader()]
    )
    assert torch.equal(in_process, with_worker)


def test_the_resize_filter_is_the_configured_one_and_a_bad_name_is_refused(syn_root: Path) -> None:
    """data.interpolation (a method's input.interpolation) picks Pillow's filter; patch_svdd composes `nearest`."""
    from hydra import compose, initialize_config_dir

    from anobench.config import config_dir
    from anobench.data.mvtec import load_image

    first = syn_root / "tablet" / "train" / "good" / sorted(p.name for p in (syn_root / "tablet" / "train" / "good").iterdir())[0]
    for name, pil in (("nearest", Image.NEAREST), ("bicubic", Image.BICUBIC), ("bilinear", Image.BILINEAR)):
        dm = _dm(syn_root, interpolation=name)
        expected = np.asarray(load_image(first).resize((32, 32), pil), dtype=np.float32).transpose(2, 0, 1) / 255
        assert np.array_equal(dm.training_images()[0].numpy(), expected), name
        assert dm.identity.key().endswith("" if name == "bilinear" else f":{name}")
    assert not torch.equal(_dm(syn_root, interpolation="nearest").training_images(), _dm(syn_root).training_images())
    with pytest.raises(ConfigError, match="data.interpolation='lanczos' is invalid.*nearest"):
        _dm(syn_root, interpolation="lanczos")
    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        assert compose("train", overrides=["method=patch_svdd"]).data.interpolation == "nearest"
        assert compose("train", overrides=["method=memae"]).data.interpolation == "bilinear"
