"""The labelled set of NBS's semi-supervised protocol: which images the predictor learns from.

Neural Batch Sampling is semi-supervised: its predictor is trained on a few images with pixel
masks. Two sources, chosen by ``labelled_source``:

- ``test_split``: ``k`` defective images per defect type plus ``n_normal`` good images drawn from
  the category's test split with a fixed seed. Those images are removed from evaluation (the
  module's ``on_test_epoch_end``) and listed in the result. At least one image of every defect type
  and one good image always stays in the evaluated set (k is capped per type); if that leaves no
  defective image to label (e.g. one test image per defect type), the selection falls back to
  ``synthetic`` and says so in the record. A dataset without ground-truth masks (``data=folder`` with
  no masks) has nothing to label pixels with, so it falls back to ``synthetic`` too, recorded the same way.
- ``synthetic``: the labelled images come from anobench's synthetic defect generator, so the method
  never sees a real defect and no test image is excluded. For a synthetic category the generator
  renders extra samples of the category with a seed different from the data's; for MVTec the
  generator's defect renderers are applied to normal training images.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from PIL import Image
from scipy import ndimage

from anobench.data import synthetic as synthetic_data
from anobench.data.datamodule import AnomalyDataModule
from anobench.data.mvtec import Sample

SOURCES = ("test_split", "synthetic")
_ALTER_THRESHOLD = 10  # same rule as the generator: a pixel is defective where a channel moved by >= 10/255


@dataclass
class LabelledSet:
    """Labelled images for the predictor.

    ``test_indices``: rows of the test split used as labelled images (excluded from evaluation).
    ``images``/``masks``: the generated labelled images (synthetic source), N×3×S×S in [0, 1] and
    N×S×S bool. ``info``: a JSON-able description that goes into result.json.
    """

    source: str
    test_indices: list[int] = field(default_factory=list)
    images: torch.Tensor | None = None
    masks: torch.Tensor | None = None
    info: dict[str, Any] = field(default_factory=dict)


def select_from_test_split(samples: list[Sample], k: int, n_normal: int, seed: int) -> list[int]:
    """Seeded choice of ``k`` defective images per defect type and ``n_normal`` good test images.

    Each type keeps at least one image for evaluation (k is capped at n_type − 1), and so do the good
    images. Returned sorted.
    """
    if k < 0 or n_normal < 0:
        raise ValueError(f"labelled_k={k} and labelled_normal={n_normal} must be >= 0")
    by_type: dict[str, list[int]] = {}
    for i, sample in enumerate(samples):
        by_type.setdefault(sample.defect_type, []).append(i)
    chosen: list[int] = []
    for defect_type in sorted(by_type):
        rows = by_type[defect_type]
        want = n_normal if defect_type == "good" else k
        take = min(want, len(rows) - 1)
        if take <= 0:
            continue
        rng = np.random.default_rng([int(seed) & 0xFFFFFFFF, zlib.crc32(defect_type.encode())])
        chosen.extend(int(rows[j]) for j in rng.choice(len(rows), size=take, replace=False))
    return sorted(chosen)


def _resize(image: np.ndarray, size: int) -> np.ndarray:
    """uint8 H×W×3 → float 3×S×S in [0, 1], resized like the datamodule (PIL bilinear)."""
    pil = Image.fromarray(image)
    if pil.size != (size, size):
        pil = pil.resize((size, size), Image.BILINEAR)
    return np.asarray(pil, dtype=np.float32).transpose(2, 0, 1) / 255.0


def _resize_mask(mask: np.ndarray, size: int) -> np.ndarray:
    return np.asarray(Image.fromarray(mask.astype(np.uint8) * 255).resize((size, size), Image.NEAREST)) > 127


def render_synthetic_category(
    category: str, data_seed: int, render_size: int, image_size: int, k: int, n_normal: int, seed: int
) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """``k`` new defective samples per defect type and ``n_normal`` good ones of a synthetic category.

    Rendered by the generator with a seed that differs from the data's, so none is a copy of a test
    (or train) image. Returns images N×3×S×S, masks N×S×S and one description per image.
    """
    label_seed = (int(data_seed) + 1_000_003 * (int(seed) + 1)) & 0xFFFFFFFF
    images, masks, names = [], [], []
    splits = [(d, i) for d in synthetic_data.SYNTHETIC_DEFECTS[category] for i in range(k)]
    splits += [("good", i) for i in range(n_normal)]
    for split, i in splits:
        image, mask, _ = synthetic_data.render_sample(category, label_seed, split, i, render_size)
        images.append(_resize(image, image_size))
        masks.append(np.zeros((image_size, image_size), bool) if mask is None else _resize_mask(mask, image_size))
        names.append(f"synthetic:{category}/seed{label_seed}/{split}/{i}")
    return torch.from_numpy(np.stack(images)), torch.from_numpy(np.stack(masks)), names


def apply_generator_defect(image: np.ndarray, defect: str, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """One generator defect on a real normal image (float H×W×3 in [0, 1]); returns (uint8 image, mask).

    The image is treated as a texture (no object outline known). Same rules as the generator's
    ``render_sample``: altered colours stay in the image's own range, the mask is every pixel that
    moved by >= 10/255, and changes outside the (closed, filled) mask are reverted.
    """
    size = image.shape[0]
    scale = size / 256.0
    dark = image.reshape(-1, 3).mean(axis=0) * 0.42
    scene = synthetic_data._Scene(image, None, None, dark, None, scale)
    normal = np.round(np.clip(image, 0, 1) * 255).astype(np.uint8)
    lo, hi = np.percentile(image.reshape(-1, 3), [0.5, 99.5], axis=0)
    for _attempt in range(50):
        altered_f = synthetic_data._DEFECTS[defect](rng, scene, image)
        altered_f = np.where(altered_f != image, np.clip(altered_f, lo, hi), altered_f)
        altered = np.round(np.clip(altered_f, 0, 1) * 255).astype(np.uint8)
        mask = np.abs(altered.astype(np.int16) - normal.astype(np.int16)).max(axis=2) >= _ALTER_THRESHOLD
        if mask.sum() >= 20 * scale**2:
            mask = ndimage.binary_fill_holes(ndimage.binary_closing(mask, iterations=2) | mask)
            return np.where(mask[..., None], altered, normal), mask
    raise RuntimeError(f"could not place a visible '{defect}' defect on a training image")


def render_on_train_images(train_images: torch.Tensor, k: int, n_normal: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """Generator defects (every kind, ``k`` each) pasted on seeded training images, plus ``n_normal`` of them untouched."""
    rng = np.random.default_rng([int(seed) & 0xFFFFFFFF, 0x4E4253])
    n_train = train_images.shape[0]
    size = train_images.shape[-1]
    images, masks, names = [], [], []
    for defect in sorted(synthetic_data._DEFECTS):
        for _ in range(k):
            row = int(rng.integers(n_train))
            base = train_images[row].permute(1, 2, 0).double().numpy()
            image, mask = apply_generator_defect(base, defect, rng)
            images.append(image.transpose(2, 0, 1).astype(np.float32) / 255.0)
            masks.append(mask)
            names.append(f"generator:{defect}_on_train/{row}")
    for row in rng.choice(n_train, size=min(n_normal, n_train), replace=False):
        images.append(train_images[int(row)].numpy())
        masks.append(np.zeros((size, size), bool))
        names.append(f"train/{int(row)}")
    return torch.from_numpy(np.stack(images)).float(), torch.from_numpy(np.stack(masks)), names


def build_labelled_set(
    datamodule: AnomalyDataModule, source: str, k: int, n_normal: int, seed: int,
    train_images: torch.Tensor | None = None,
) -> LabelledSet:
    """The labelled set for `datamodule`'s category (see module docstring); `info` records the choice."""
    if source not in SOURCES:
        raise ValueError(f"labelled_source={source!r}; expected one of {', '.join(SOURCES)}")
    info: dict[str, Any] = {"requested_source": source, "k_per_defect_type": k, "n_normal": n_normal, "seed": seed}
    samples = datamodule.test_samples
    if source == "test_split" and not datamodule.has_masks:
        info["fallback"] = ("the dataset has no ground-truth masks, so no test image can be labelled with its "
                            "defect pixels; used the synthetic generator's defects on training images instead")
    elif source == "test_split":
        rows = select_from_test_split(samples, k, n_normal, seed)
        if any(samples[i].label == 1 for i in rows):
            info.update(source="test_split", test_indices=rows,
                        test_images=[f"{samples[i].defect_type}/{samples[i].image_path.name}" for i in rows])
            return LabelledSet(source="test_split", test_indices=rows, info=info)
        info["fallback"] = ("the test split has no defect type with more than one image, so labelling one "
                            "would remove it from evaluation; used the synthetic generator instead")
    size = datamodule.image_size
    if datamodule.dataset == "synthetic":
        render_size = int(datamodule.synthetic.get("image_size", 256))
        data_seed = int(datamodule.synthetic.get("seed", 0))
        images, masks, names = render_synthetic_category(datamodule.category, data_seed, render_size, size,
                                                         max(k, 1), n_normal, seed)
    else:
        if train_images is None:
            raise ValueError("the synthetic source on a real dataset needs the training images")
        images, masks, names = render_on_train_images(train_images, max(k, 1), n_normal, seed)
    info.update(source="synthetic", test_indices=[], generated_images=names)
    return LabelledSet(source="synthetic", images=images, masks=masks, info=info)
