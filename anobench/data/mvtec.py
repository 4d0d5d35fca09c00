"""Index and load an MVTec-AD-style category folder, failing early with actionable messages.

Why: a benchmark run should stop before training when the data is incomplete (a missing mask,
a mask of the wrong size, a corrupt file), and say which file is at fault. The same code reads
the official MVTec AD, the synthetic categories and user datasets in the same layout::

    <root>/<category>/train/good/*.png
    <root>/<category>/test/<good|defect>/*.png
    <root>/<category>/ground_truth/<defect>/<stem>_mask.png

Masks without a matching test image are ignored with a DataWarning naming them (never an error).
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from anobench.config import MVTEC_ROOT_ENV
from anobench.errors import DataError, DataWarning

__all__ = [
    "MVTEC_CATEGORIES",
    "MVTEC_TEXTURES",
    "MVTEC_OBJECTS",
    "ROOT_ENV_VAR",
    "IMAGE_SUFFIXES",
    "Sample",
    "CategoryIndex",
    "index_category",
    "resolve_root",
    "load_image",
    "load_mask",
    "image_size",
]

MVTEC_TEXTURES: tuple[str, ...] = ("carpet", "grid", "leather", "tile", "wood")
MVTEC_OBJECTS: tuple[str, ...] = (
    "bottle",
    "cable",
    "capsule",
    "hazelnut",
    "metal_nut",
    "pill",
    "screw",
    "toothbrush",
    "transistor",
    "zipper",
)
MVTEC_CATEGORIES: tuple[str, ...] = tuple(sorted(MVTEC_TEXTURES + MVTEC_OBJECTS))

ROOT_ENV_VAR = MVTEC_ROOT_ENV  # the name is defined in anobench/config.py
IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp"})
GOOD = "good"


@dataclass(frozen=True)
class Sample:
    """One image of a category; ``mask_path`` is None for good images."""

    image_path: Path
    mask_path: Path | None
    label: int  # 0 good, 1 defective
    defect_type: str  # "good" or the defect folder name


@dataclass
class CategoryIndex:
    """All samples of a category in a deterministic order (test: by defect type, then filename)."""

    root: Path
    category: str
    train: list[Sample] = field(default_factory=list)
    test: list[Sample] = field(default_factory=list)


# --------------------------------------------------------------------------------------------
def resolve_root(root: str | Path | None) -> Path:
    """The dataset root: ``root`` if given, else ``$ANOBENCH_MVTEC_ROOT``; no silent default."""
    if root is not None and str(root) != "":
        return Path(root).expanduser()
    env = os.environ.get(ROOT_ENV_VAR, "")
    if env:
        return Path(env).expanduser()
    raise DataError(
        "no MVTec AD root given: pass data.root=/path/to/mvtec_anomaly_detection (the folder that holds "
        f"bottle/, cable/, ...) or set the environment variable {ROOT_ENV_VAR}"
    )


def _is_image(path: Path) -> bool:
    return not path.name.startswith(".") and path.suffix.lower() in IMAGE_SUFFIXES and path.is_file()


def _images_in(folder: Path) -> list[Path]:
    return sorted((p for p in folder.iterdir() if _is_image(p)), key=lambda p: p.name)


def _subdirs(folder: Path) -> list[Path]:
    return sorted((p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")), key=lambda p: p.name)


def image_size(path: Path) -> tuple[int, int]:
    """(W, H) from the file header only (PIL opens lazily), for cheap consistency checks."""
    try:
        with Image.open(path) as im:
            return im.size
    except FileNotFoundError:
        raise DataError(f"image file {path} does not exist") from None
    except (OSError, UnidentifiedImageError, ValueError, SyntaxError) as exc:
        raise DataError(f"cannot read image header of {path}: {exc}; expected a PNG/JPEG/BMP image") from None


def _find_mask(gt_dir: Path, stem: str) -> Path | None:
    """``<stem>_mask.<ext>``, case-insensitive on the extension; .png preferred."""
    exact = gt_dir / f"{stem}_mask.png"
    if exact.is_file():
        return exact
    if not gt_dir.is_dir():
        return None
    for candidate in sorted(gt_dir.iterdir()):
        if candidate.stem == f"{stem}_mask" and _is_image(candidate):
            return candidate
    return None


def index_category(root: str | Path, category: str) -> CategoryIndex:
    """Validate ``<root>/<category>`` and list its train and test samples.

    Raises DataError naming the folder or file at fault: root or category missing (listing the
    categories that exist), train/good missing or empty, test missing or empty, a defective image
    without its mask, or a mask whose size differs from its image (read from headers only).
    """
    root = Path(root).expanduser()
    if not root.is_dir():
        raise DataError(
            f"dataset root {root} does not exist or is not a folder; set it with data.root=/path/to/"
            f"mvtec_anomaly_detection or the environment variable {ROOT_ENV_VAR}"
        )
    folder = root / category
    if not folder.is_dir():
        present = [p.name for p in _subdirs(root)]
        listing = ", ".join(present) if present else "none (the root folder has no category sub-folders)"
        raise DataError(f"category '{category}' not found: {folder} does not exist. Categories under {root}: {listing}")

    train_dir = folder / "train" / GOOD
    if not train_dir.is_dir():
        raise DataError(f"training folder {train_dir} does not exist; expected the normal training images there")
    train_images = _images_in(train_dir)
    if not train_images:
        raise DataError(
            f"training folder {train_dir} has no images; expected files ending in {', '.join(sorted(IMAGE_SUFFIXES))}"
        )
    train = [Sample(p, None, 0, GOOD) for p in train_images]

    test_dir = folder / "test"
    if not test_dir.is_dir():
        raise DataError(f"test folder {test_dir} does not exist; expected test/good and test/<defect> folders there")
    test: list[Sample] = []
    for defect_dir in _subdirs(test_dir):
        defect = defect_dir.name
        gt_dir = folder / "ground_truth" / defect
        for image_path in _images_in(defect_dir):
            if defect == GOOD:
                test.append(Sample(image_path, None, 0, GOOD))
                continue
            mask_path = _find_mask(gt_dir, image_path.stem)
            if mask_path is None:
                raise DataError(
                    f"defective test image {image_path} has no mask; expected {gt_dir / (image_path.stem + '_mask.png')}"
                )
            img_size, mask_size = image_size(image_path), image_size(mask_path)
            if img_size != mask_size:
                raise DataError(
                    f"mask {mask_path} is {mask_size[0]}x{mask_size[1]} but its image {image_path} is "
                    f"{img_size[0]}x{img_size[1]} (WxH); a mask must have its image's size"
                )
            test.append(Sample(image_path, mask_path, 1, defect))
    if not test:
        raise DataError(f"test folder {test_dir} has no images; expected test/good/*.png and test/<defect>/*.png")
    if not any(s.label == 0 for s in test):
        raise DataError(
            f"test folder {test_dir} has no good images; expected {test_dir / GOOD}/*.png (image AUROC needs both "
            "good and defective test images)"
        )
    if not any(s.label == 1 for s in test):
        raise DataError(
            f"test folder {test_dir} has no defective images; expected test/<defect>/*.png beside test/good "
            "(image AUROC, pixel AUROC and PRO need defects)"
        )
    _warn_orphan_masks(folder / "ground_truth", {s.mask_path for s in test if s.mask_path is not None})
    test.sort(key=lambda s: (s.defect_type, s.image_path.name))
    return CategoryIndex(root=root, category=category, train=train, test=test)


def _warn_orphan_masks(gt_root: Path, used: set[Path]) -> None:
    """A mask whose image is missing is probably a dataset copy error: say so instead of ignoring it."""
    if not gt_root.is_dir():
        return
    orphans = [m for d in _subdirs(gt_root) for m in _images_in(d) if m not in used]
    if orphans:
        shown = ", ".join(str(p) for p in orphans[:5]) + (f" and {len(orphans) - 5} more" if len(orphans) > 5 else "")
        warnings.warn(
            f"{len(orphans)} mask(s) under {gt_root} have no test image and are ignored: {shown}; expected "
            "ground_truth/<defect>/<name>_mask.png beside test/<defect>/<name>.png",
            DataWarning,
            stacklevel=3,
        )


def check_decodable(index: CategoryIndex) -> None:
    """Verify every image and mask of a category before training starts, so a corrupt test file does not
    surface only after a (possibly long) training run. PIL's verify() checks the file's structure and
    checksums without decoding pixels (about a millisecond per MVTec image)."""
    paths = [s.image_path for s in index.train + index.test] + [s.mask_path for s in index.test if s.mask_path]
    for path in paths:
        try:
            with Image.open(path) as im:
                im.verify()
        except FileNotFoundError:
            raise DataError(f"file {path} does not exist (it was listed when the category was indexed)") from None
        except Exception as exc:  # PIL raises many types for corrupt files (OSError, SyntaxError, struct.error...)
            raise DataError(
                f"cannot read {path}: {exc}; the file is corrupt or not an image (expected PNG/JPEG/BMP) - "
                "re-download the dataset or remove the file. Checked before training, nothing was trained."
            ) from None


# --------------------------------------------------------------------------------------------
def _to_rgb(im: Image.Image) -> Image.Image:
    """RGB for any PIL mode: 16-bit and float greyscale are rescaled, alpha is dropped."""
    mode = im.mode
    if mode == "RGB":
        return im.copy()  # a copy: the caller closes the file-backed original
    if mode.startswith("I;16") or mode in ("I", "F"):
        arr = np.asarray(im, dtype=np.float64)
        if mode == "F":
            scale = 1.0 if arr.size and np.nanmax(arr) <= 1.0 else 255.0
        elif mode.startswith("I;16") or (arr.size and arr.max() > 255):
            scale = 65535.0
        else:
            scale = 255.0
        grey = np.clip(np.nan_to_num(arr) / scale * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return Image.fromarray(grey, mode="L").convert("RGB")
    if mode in ("P", "PA"):
        return im.convert("RGBA").convert("RGB")
    return im.convert("RGB")


def load_image(path: str | Path) -> Image.Image:
    """Decode an image fully as RGB; corrupt or truncated files raise DataError naming the file."""
    path = Path(path)
    try:
        with Image.open(path) as im:
            im.load()
            return _to_rgb(im)
    except FileNotFoundError:
        raise DataError(f"image file {path} does not exist") from None
    except (OSError, UnidentifiedImageError, ValueError, SyntaxError, EOFError) as exc:
        raise DataError(
            f"cannot read image {path}: {exc}; the file is corrupt or not an image (expected PNG/JPEG/BMP) - "
            "re-download the dataset or remove the file"
        ) from None


def load_mask(path: str | Path, expected_size: tuple[int, int] | None = None) -> np.ndarray:
    """Bool H×W mask at the file's resolution (nonzero = defect); size checked against (W, H)."""
    path = Path(path)
    try:
        with Image.open(path) as im:
            im.load()
            if expected_size is not None and tuple(im.size) != tuple(expected_size):
                raise DataError(
                    f"mask {path} is {im.size[0]}x{im.size[1]} but expected {expected_size[0]}x{expected_size[1]} "
                    "(WxH, the size of its image)"
                )
            if im.mode in ("RGB", "RGBA", "RGBX", "CMYK", "YCbCr", "LAB", "HSV"):
                arr = np.asarray(im.convert("RGB")).max(axis=2)
            elif im.mode in ("LA", "PA"):
                arr = np.asarray(im)[..., 0]
            else:  # 1, L, P (palette index), I, I;16, F
                arr = np.asarray(im)
    except DataError:
        raise
    except FileNotFoundError:
        raise DataError(f"mask file {path} does not exist") from None
    except (OSError, UnidentifiedImageError, ValueError, SyntaxError, EOFError) as exc:
        raise DataError(f"cannot read mask {path}: {exc}; expected a 0/255 PNG mask") from None
    return np.asarray(arr != 0, dtype=bool)
