"""Index and load an MVTec-AD-style category folder, failing early with actionable messages.

Why: a benchmark run should stop before training when the data is incomplete (a missing mask,
a mask of the wrong size, a corrupt file), and say which file is at fault. The same code reads
the official MVTec AD, the synthetic categories and user datasets in the same layout::

    <root>/<category>/train/good/*.png
    <root>/<category>/test/<good|defect>/*.png
    <root>/<category>/ground_truth/<defect>/<stem>_mask.png

and, through a `Layout` (other normal-folder and mask names, masks optional), the releases that follow
the same scheme (anobench/data/layouts.py: MPDD, BTAD, VisA converted, your own folder).
Masks without a matching test image are ignored with a DataWarning naming them (never an error).
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from anobench.config import DATASET_ROOT_ENVS, MVTEC_ROOT_ENV
from anobench.errors import DataError, DataWarning

__all__ = [
    "MVTEC_CATEGORIES",
    "MVTEC_TEXTURES",
    "MVTEC_OBJECTS",
    "ROOT_ENV_VAR",
    "IMAGE_SUFFIXES",
    "Sample",
    "CategoryIndex",
    "Layout",
    "MVTEC_LAYOUT",
    "index_category",
    "index_folder",
    "check_decodable",
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
IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff"})
IMAGE_KINDS = "PNG/JPEG/BMP/TIFF"
GOOD = "good"


@dataclass(frozen=True)
class Sample:
    """One image of a category; ``mask_path`` is None for good images, and for the defective ones of a dataset
    without any masks (your own data, `Layout.masks_required` False)."""

    image_path: Path
    mask_path: Path | None
    label: int  # 0 good, 1 defective
    defect_type: str  # "good" (whatever the normal folder is called) or the defect folder name


@dataclass
class CategoryIndex:
    """All samples of a category in a deterministic order (test: by defect type, then filename)."""

    root: Path
    category: str
    train: list[Sample] = field(default_factory=list)
    test: list[Sample] = field(default_factory=list)


# --------------------------------------------------------------------------------------------
_ROOT_WHAT = {  # what the root of each dataset holds, for the error that asks for it
    "mvtec": ("MVTec AD", "/path/to/mvtec_anomaly_detection", "bottle/, cable/, ..."),
    "visa": ("VisA", "/path/to/VisA", "split_csv/1cls.csv and candle/, ..., or the MVTec-layout candle/, ..."),
    "btad": ("BTAD", "/path/to/BTech_Dataset_transformed", "01/, 02/, 03/"),
    "mpdd": ("MPDD", "/path/to/MPDD", "bracket_black/, ..., tubes/"),
    "folder": ("your own dataset (data=folder)", "/path/to/my_dataset", "train/ and test/"),
}


def resolve_root(root: str | Path | None, dataset: str = "mvtec") -> Path:
    """The dataset root: ``root`` if given, else the dataset's environment variable (anobench.config.DATASET_ROOT_ENVS,
    ``$ANOBENCH_MVTEC_ROOT`` for MVTec AD); no silent default."""
    if root is not None and str(root) != "":
        return Path(root).expanduser()
    env_var = DATASET_ROOT_ENVS.get(dataset)
    env = os.environ.get(env_var, "") if env_var else ""
    if env:
        return Path(env).expanduser()
    title, example, holds = _ROOT_WHAT.get(dataset, (dataset, "/path/to/dataset", "its category folders"))
    where = f" or set the environment variable {env_var}" if env_var else ""
    raise DataError(f"no {title} root given: pass data.root={example} (the folder that holds {holds}){where}")


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
        raise DataError(f"cannot read image header of {path}: {exc}; expected a {IMAGE_KINDS} image") from None


def _masks_by_stem(gt_dir: Path) -> dict[str, Path]:
    """The images of a mask folder by file stem (one listing per folder); .png wins over another suffix."""
    found: dict[str, Path] = {}
    if gt_dir.is_dir():
        for path in _images_in(gt_dir):
            if path.stem not in found or path.suffix.lower() == ".png":
                found[path.stem] = path
    return found


@dataclass(frozen=True)
class Layout:
    """How a release that follows MVTec AD's folder scheme names one category's files::

        <folder>/train/<normal>/*                      normal training images
        <folder>/test/<normal>/*, test/<defect>/*      one folder per class of test image
        <folder>/<mask_dir>/<defect>/<stem><suffix>.*  the mask of test/<defect>/<stem>.* (any image suffix)

    ``mask_suffixes`` are tried in order (MVTec: ``_mask``; BTAD and converted VisA: ``""``, the image's own stem).
    With ``masks_required`` every defective image needs its mask; without it (your own data) a dataset may have
    no masks at all (``mask_path`` None), but some-but-not-all is still an error, so that pixel metrics are
    never computed on part of the defects.
    """

    title: str = "MVTec AD"
    normal: str = GOOD
    mask_dir: str = "ground_truth"
    mask_suffixes: tuple[str, ...] = ("_mask",)
    masks_required: bool = True


MVTEC_LAYOUT = Layout()


def index_folder(folder: str | Path, layout: Layout = MVTEC_LAYOUT, *, root: Path | None = None,
                 category: str | None = None) -> CategoryIndex:
    """Validate one category folder in `layout` (it holds train/ and test/) and list its samples.

    Normal images get defect type "good" whatever the layout calls their folder (BTAD: ok), so that code
    grouping by defect type treats them alike. ``root`` and ``category`` only label the index (default: the
    folder's parent and name). Raises DataError naming the folder or file at fault: train/<normal> missing or
    empty, test missing or empty, no good or no defective test image, a defective image without its mask, or
    a mask whose size differs from its image (read from headers only).
    """
    folder = Path(folder).expanduser()
    normal = layout.normal
    train_dir = folder / "train" / normal
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
        raise DataError(
            f"test folder {test_dir} does not exist; expected test/{normal} and test/<defect> folders there"
        )
    gt_root = folder / layout.mask_dir
    test: list[Sample] = []
    unmasked: list[tuple[Path, Path]] = []  # (defective image, the mask it was expected to have)
    for defect_dir in _subdirs(test_dir):
        defect = defect_dir.name
        if defect == normal:
            test.extend(Sample(p, None, 0, GOOD) for p in _images_in(defect_dir))
            continue
        gt_dir = gt_root / defect
        masks = _masks_by_stem(gt_dir)
        for image_path in _images_in(defect_dir):
            mask_path = next((masks[image_path.stem + sfx] for sfx in layout.mask_suffixes
                              if image_path.stem + sfx in masks), None)
            if mask_path is None:
                unmasked.append((image_path, gt_dir / f"{image_path.stem}{layout.mask_suffixes[0]}.png"))
            else:
                img_size, mask_size = image_size(image_path), image_size(mask_path)
                if img_size != mask_size:
                    raise DataError(
                        f"mask {mask_path} is {mask_size[0]}x{mask_size[1]} but its image {image_path} is "
                        f"{img_size[0]}x{img_size[1]} (WxH); a mask must have its image's size"
                    )
            test.append(Sample(image_path, mask_path, 1, defect))
    if not test:
        raise DataError(
            f"test folder {test_dir} has no images; expected test/{normal}/*.png and test/<defect>/*.png"
        )
    if not any(s.label == 0 for s in test):
        raise DataError(
            f"test folder {test_dir} has no good images; expected {test_dir / normal}/*.png (image AUROC needs both "
            "good and defective test images)"
        )
    n_defective = sum(s.label for s in test)
    if not n_defective:
        raise DataError(
            f"test folder {test_dir} has no defective images; expected test/<defect>/*.png beside test/{normal} "
            "(image AUROC, pixel AUROC and PRO need defects)"
        )
    if unmasked and not layout.masks_required and len(unmasked) == n_defective:
        stray = [m for d in (_subdirs(gt_root) if gt_root.is_dir() else []) for m in _images_in(d)]
        if stray:  # masks there, named otherwise: computing no pixel metrics would hide the mistake
            image_path, expected = min(unmasked, key=lambda pair: (pair[0].parent.name, pair[0].name))
            raise DataError(
                f"no defective test image has a mask, but {gt_root} holds {len(stray)} image(s) (e.g. {stray[0]}); "
                f"the mask of {image_path} was expected at {expected}: name masks <image stem>"
                f"{layout.mask_suffixes[0]}.<ext> in {layout.mask_dir}/<defect>/ (data.mask_dir, data.mask_suffix), "
                f"or remove {gt_root} for image metrics only")
    if unmasked and (layout.masks_required or len(unmasked) < n_defective):
        image_path, expected = min(unmasked, key=lambda pair: (pair[0].parent.name, pair[0].name))
        some = "" if layout.masks_required else (
            f" ({n_defective - len(unmasked)} of the {n_defective} defective images have masks: give every "
            f"defective image its mask, or none for image metrics only)")
        raise DataError(f"defective test image {image_path} has no mask; expected {expected}{some}")
    _warn_orphan_masks(gt_root, {s.mask_path for s in test if s.mask_path is not None}, layout)
    test.sort(key=lambda s: (s.defect_type, s.image_path.name))
    return CategoryIndex(root=root if root is not None else folder.parent,
                         category=category if category is not None else folder.name, train=train, test=test)


def index_category(root: str | Path, category: str, layout: Layout = MVTEC_LAYOUT,
                   root_hint: str | None = None) -> CategoryIndex:
    """Validate ``<root>/<category>`` (a release with one folder per category, MVTec AD's `layout` by default)
    and list its train and test samples (`index_folder`).

    Raises DataError naming the folder or file at fault; a missing root says how to set it (`root_hint`,
    default: MVTec AD's data.root / environment variable), a missing category lists the categories that exist.
    """
    root = Path(root).expanduser()
    if not root.is_dir():
        hint = root_hint or f"data.root=/path/to/mvtec_anomaly_detection or the environment variable {ROOT_ENV_VAR}"
        raise DataError(f"dataset root {root} does not exist or is not a folder; set it with {hint}")
    folder = root / category
    if not folder.is_dir():
        present = [p.name for p in _subdirs(root)]
        listing = ", ".join(present) if present else "none (the root folder has no category sub-folders)"
        raise DataError(f"category '{category}' not found: {folder} does not exist. Categories under {root}: {listing}")
    return index_folder(folder, layout, root=root, category=category)


def _warn_orphan_masks(gt_root: Path, used: set[Path], layout: Layout = MVTEC_LAYOUT) -> None:
    """A mask whose image is missing is probably a dataset copy error: say so instead of ignoring it."""
    if not gt_root.is_dir():
        return
    orphans = [m for d in _subdirs(gt_root) for m in _images_in(d) if m not in used]
    if orphans:
        shown = ", ".join(str(p) for p in orphans[:5]) + (f" and {len(orphans) - 5} more" if len(orphans) > 5 else "")
        warnings.warn(
            f"{len(orphans)} mask(s) under {gt_root} have no test image and are ignored: {shown}; expected "
            f"{layout.mask_dir}/<defect>/<name>{layout.mask_suffixes[0]}.png beside test/<defect>/<name>.png",
            DataWarning,
            stacklevel=3,
        )


def check_decodable(index: CategoryIndex) -> None:
    """Verify every image and mask of a category before training starts, so a corrupt test file does not
    surface only after a (possibly long) training run. For PNG, PIL's verify() checks the file's structure and
    checksums without decoding pixels (about a millisecond per MVTec image); JPEG, BMP and TIFF have no such
    check in PIL (verify() passes a truncated file), so those are decoded in full."""
    paths = [s.image_path for s in index.train + index.test] + [s.mask_path for s in index.test if s.mask_path]
    for path in paths:
        try:
            with Image.open(path) as im:
                if im.format == "PNG":
                    im.verify()
                else:
                    if im.format == "JPEG":  # decoding at 1/8 scale still reads every byte: twice as fast
                        im.draft(None, (max(1, im.size[0] // 8), max(1, im.size[1] // 8)))
                    im.load()
        except FileNotFoundError:
            raise DataError(f"file {path} does not exist (it was listed when the category was indexed)") from None
        except Exception as exc:  # PIL raises many types for corrupt files (OSError, SyntaxError, struct.error...)
            raise DataError(
                f"cannot read {path}: {exc}; the file is corrupt or not an image (expected {IMAGE_KINDS}) - "
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
            f"cannot read image {path}: {exc}; the file is corrupt or not an image (expected {IMAGE_KINDS}) - "
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
        raise DataError(f"cannot read mask {path}: {exc}; expected a mask image (nonzero = defect)") from None
    return np.asarray(arr != 0, dtype=bool)
