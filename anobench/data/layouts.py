"""MPDD, BTAD, VisA and your own folder, each read exactly as it lays out its files, through the one indexer of
anobench/data/mvtec.py (`index_folder` with a `Layout`); VisA's split file is read by `index_visa_csv`.

Where each layout fact comes from:

MPDD (Jezek et al., ICUMT 2021; https://github.com/stepanje/MPDD): MVTec AD's layout,
    ``<root>/<category>/train/good``, ``test/good|<defect>``, ``ground_truth/<defect>/<stem>_mask.png``; the six
    categories and the PNG files as in anomalib's ``src/anomalib/data/datasets/image/mpdd.py`` (CATEGORIES,
    IMG_EXTENSIONS); the ``_mask`` names as in the release's paths that other code lists, e.g.
    ``MPDD/bracket_black/ground_truth/bent/000_mask.png``.
BTAD (Mishra et al. 2021; btad.zip from http://avires.dimi.uniud.it/papers/btad/): products ``01``, ``02``, ``03``;
    ``train/ok``, ``test/ok|ko``, ``ground_truth/ko/<stem>.png``: a mask has its image's own stem (no ``_mask``);
    images are BMP or PNG (anomalib's ``src/anomalib/data/image/btech.py``: make_btech_dataset pairs
    ``<split>/<label>/<stem>.bmp|png`` with ``ground_truth/<label>/<stem>.png``; its BTech.prepare_data moves the
    archive's top folder ``BTech_Dataset_transformed`` to the root, so a root holding that folder is read too).
VisA (Zou et al., ECCV 2022; https://github.com/amazon-science/spot-diff): the release has
    ``<root>/<object>/Data/Images/{Normal,Anomaly}/*.JPG`` and ``<object>/Data/Masks/Anomaly/*.png`` and the
    authors' split file ``<root>/split_csv/1cls.csv`` with the header ``object,split,label,image,mask``, split
    ``train``/``test``, label ``normal``/``anomaly``, paths relative to the root (spot-diff's split_csv/1cls.csv,
    e.g. ``candle,test,anomaly,candle/Data/Images/Anomaly/000.JPG,candle/Data/Masks/Anomaly/000.png``; the mask
    column is empty for normal images). Masks are not 0/255: spot-diff's utils/prepare_data.py binarises them with
    ``mask != 0``, which `load_mask` does. The same prepare_data.py (and anomalib's
    ``src/anomalib/data/datamodules/image/visa.py``, apply_cls1_split, into ``<root>/visa_pytorch``) converts the
    release to MVTec's layout: ``<category>/train/good``, ``test/good|bad``, ``ground_truth/bad/<stem>.png`` (the
    mask's own file name, the image's stem). Both forms are read; a root with ``split_csv/1cls.csv`` is read
    through the CSV, else ``<root>``, ``<root>/visa_pytorch`` or ``<root>/1cls`` (prepare_data's save folder)
    holding ``<category>/train`` is read as converted. Defective images of both forms get the defect type "bad"
    (the conversion's folder name; the CSV has no finer defect type), so both forms index alike.
folder (your own data, ``data=folder``): ``data.root`` holds ``train/<normal>`` and ``test/<normal>|<defect>...``
    (one "abnormal" folder is fine); masks optional, MVTec's naming by default (``data.mask_dir``,
    ``data.mask_suffix``); no masks at all means image metrics only.
"""

from __future__ import annotations

import csv
from pathlib import Path

from anobench.config import DATASET_ROOT_ENVS
from anobench.data.mvtec import (
    GOOD,
    MVTEC_CATEGORIES,
    CategoryIndex,
    Layout,
    Sample,
    _subdirs,
    image_size,
    index_category,
    index_folder,
)
from anobench.errors import DataError

__all__ = [
    "MPDD_CATEGORIES", "BTAD_CATEGORIES", "VISA_CATEGORIES", "DATASET_CATEGORIES", "DATASET_TITLES",
    "MPDD_LAYOUT", "BTAD_LAYOUT", "VISA_LAYOUT", "VISA_SPLIT_CSV", "VISA_COLUMNS", "VISA_DEFECT",
    "folder_layout", "index_dataset", "index_visa_csv",
]

MPDD_CATEGORIES: tuple[str, ...] = ("bracket_black", "bracket_brown", "bracket_white", "connector", "metal_plate",
                                    "tubes")
BTAD_CATEGORIES: tuple[str, ...] = ("01", "02", "03")
VISA_CATEGORIES: tuple[str, ...] = ("candle", "capsules", "cashew", "chewinggum", "fryum", "macaroni1", "macaroni2",
                                    "pcb1", "pcb2", "pcb3", "pcb4", "pipe_fryum")
DATASET_CATEGORIES: dict[str, tuple[str, ...]] = {
    "mvtec": MVTEC_CATEGORIES, "visa": VISA_CATEGORIES, "btad": BTAD_CATEGORIES, "mpdd": MPDD_CATEGORIES}
DATASET_TITLES = {"mvtec": "MVTec AD", "visa": "VisA", "btad": "BTAD", "mpdd": "MPDD", "folder": "your own dataset",
                  "synthetic": "synthetic"}

MPDD_LAYOUT = Layout(title="MPDD")
BTAD_LAYOUT = Layout(title="BTAD", normal="ok", mask_suffixes=("",))
VISA_LAYOUT = Layout(title="VisA (MVTec layout)", mask_suffixes=("",))
BTAD_ARCHIVE_FOLDER = "BTech_Dataset_transformed"  # btad.zip's top folder
VISA_SPLIT_CSV = "split_csv/1cls.csv"
VISA_COLUMNS = ("object", "split", "label", "image", "mask")
VISA_DEFECT = "bad"
VISA_CONVERTED_FOLDERS = ("", "visa_pytorch", "1cls")  # under the root: where a converted VisA may lie


def folder_layout(normal_dir: str = GOOD, mask_dir: str = "ground_truth", mask_suffix: str = "_mask") -> Layout:
    """Your own dataset's layout (``data=folder``): masks optional, names as configured."""
    for key, value in (("data.normal_dir", normal_dir), ("data.mask_dir", mask_dir)):
        if not isinstance(value, str) or not value or "/" in value or "\\" in value:
            raise DataError(f"{key}={value!r} is invalid; expected a folder name (no path separators)")
    if not isinstance(mask_suffix, str):
        raise DataError(f"data.mask_suffix={mask_suffix!r} is invalid; expected a string such as _mask or ''")
    return Layout(title="your own dataset", normal=normal_dir, mask_dir=mask_dir, mask_suffixes=(mask_suffix,),
                  masks_required=False)


def _root_hint(dataset: str, example: str) -> str:
    env = DATASET_ROOT_ENVS.get(dataset)
    return f"data.root={example}" + (f" or the environment variable {env}" if env else "")


def index_dataset(dataset: str, root: str | Path, category: str, *, normal_dir: str = GOOD,
                  mask_dir: str = "ground_truth", mask_suffix: str = "_mask") -> CategoryIndex:
    """One category of `dataset` (mvtec, synthetic, mpdd, btad, visa, folder) under `root`, as its release
    lays it out. For ``folder``, `root` is the folder holding train/ and test/ and `category` only names it;
    `normal_dir`, `mask_dir` and `mask_suffix` apply to it alone."""
    root = Path(root).expanduser()
    if dataset in ("mvtec", "synthetic"):
        return index_category(root, category)
    if dataset == "mpdd":
        return index_category(root, category, MPDD_LAYOUT, _root_hint("mpdd", "/path/to/MPDD"))
    if dataset == "btad":
        if not (root / category).is_dir() and (root / BTAD_ARCHIVE_FOLDER / category).is_dir():
            root = root / BTAD_ARCHIVE_FOLDER
        return index_category(root, category, BTAD_LAYOUT, _root_hint("btad", "/path/to/BTech_Dataset_transformed"))
    if dataset == "visa":
        return _index_visa(root, category)
    if dataset == "folder":
        return _index_own_folder(root, category, folder_layout(normal_dir, mask_dir, mask_suffix))
    raise DataError(f"no loader for dataset '{dataset}'; expected one of mvtec, synthetic, mpdd, btad, visa, folder")


def _index_own_folder(root: Path, category: str, layout: Layout) -> CategoryIndex:
    if not root.is_dir():
        raise DataError(f"data.root={root} does not exist or is not a folder; data=folder expects the folder that "
                        f"holds train/{layout.normal}/ and test/ (docs/usage.md, \"Your own dataset\")")
    if not (root / "train").is_dir():
        nested = [p.name for p in _subdirs(root) if (p / "train").is_dir()]
        hint = (f"; it holds {', '.join(nested)} with train/ inside: pass data.root={root / nested[0]}" if nested
                else f"; expected {root / 'train' / layout.normal}/ and {root / 'test'}/")
        raise DataError(f"data.root={root} has no train/ folder{hint} (data=folder, docs/usage.md)")
    return index_folder(root, layout, root=root, category=category)


# --- VisA ---------------------------------------------------------------------------------------
def _index_visa(root: Path, category: str) -> CategoryIndex:
    """The release through its split file, else a conversion to MVTec's layout (module docstring)."""
    if not root.is_dir():
        raise DataError(f"dataset root {root} does not exist or is not a folder; set it with "
                        f"{_root_hint('visa', '/path/to/VisA')}")
    if (root / VISA_SPLIT_CSV).is_file():
        return index_visa_csv(root, category)
    for sub in VISA_CONVERTED_FOLDERS:
        base = root / sub if sub else root
        if (base / category / "train").is_dir():
            return index_folder(base / category, VISA_LAYOUT, root=base, category=category)
    raise DataError(
        f"no VisA category '{category}' under {root}: expected the release ({root / VISA_SPLIT_CSV} beside "
        f"{root / category / 'Data'}) or VisA converted to MVTec's layout ({root / category / 'train' / 'good'}, "
        f"test/good|bad, ground_truth/bad, as spot-diff's prepare_data.py or anomalib's visa_pytorch/ writes it)")


def index_visa_csv(root: str | Path, category: str, split_file: str | Path | None = None) -> CategoryIndex:
    """`category`'s samples from VisA's 1-class split file (default ``<root>/split_csv/1cls.csv``), paths relative
    to `root`. Raises DataError naming the file and line at fault: a wrong header, an unknown split or label
    value, a listed file that is missing, an anomalous test image without its mask, a mask of another size."""
    root = Path(root).expanduser()
    split_file = Path(split_file) if split_file is not None else root / VISA_SPLIT_CSV
    train: list[Sample] = []
    test: list[Sample] = []
    objects: set[str] = set()
    try:
        fh = open(split_file, newline="", encoding="utf-8")
    except OSError as exc:
        raise DataError(f"cannot read VisA's split file {split_file}: {exc}") from None
    with fh:
        reader = csv.reader(fh)
        header = [cell.strip().lstrip("\ufeff") for cell in next(reader, [])]
        if tuple(header[: len(VISA_COLUMNS)]) != VISA_COLUMNS:
            raise DataError(f"{split_file} starts with {','.join(header) or 'nothing'}; expected VisA's split file "
                            f"with the header {','.join(VISA_COLUMNS)} (spot-diff's split_csv/1cls.csv)")
        for line, row in enumerate(reader, start=2):
            if not any(cell.strip() for cell in row):
                continue
            if len(row) < len(VISA_COLUMNS):
                raise DataError(f"{split_file} line {line} has {len(row)} columns; expected {','.join(VISA_COLUMNS)}")
            obj, split, label, image, mask = (cell.strip() for cell in row[: len(VISA_COLUMNS)])
            objects.add(obj)
            if obj != category:
                continue
            where = f"{split_file} line {line}"
            if split not in ("train", "test"):
                raise DataError(f"{where}: split '{split}'; expected train or test")
            if label not in ("normal", "anomaly"):
                raise DataError(f"{where}: label '{label}'; expected normal or anomaly")
            image_path = root / image
            if not image_path.is_file():
                raise DataError(f"image {image_path} listed in {where} does not exist; expected the VisA release "
                                f"extracted under {root}")
            if split == "train":
                if label != "normal":
                    raise DataError(f"{where}: an anomalous training image; the 1-class split trains on normal "
                                    "images only (is this split_csv/1cls.csv?)")
                train.append(Sample(image_path, None, 0, GOOD))
            elif label == "normal":
                test.append(Sample(image_path, None, 0, GOOD))
            else:
                if not mask:
                    raise DataError(f"anomalous test image {image_path} ({where}) has no mask in the mask column")
                mask_path = root / mask
                if not mask_path.is_file():
                    raise DataError(f"mask {mask_path} of {image_path} ({where}) does not exist")
                img_size, mask_size = image_size(image_path), image_size(mask_path)
                if img_size != mask_size:
                    raise DataError(f"mask {mask_path} is {mask_size[0]}x{mask_size[1]} but its image {image_path} "
                                    f"is {img_size[0]}x{img_size[1]} (WxH); a mask must have its image's size")
                test.append(Sample(image_path, mask_path, 1, VISA_DEFECT))
    if category not in objects:
        listing = ", ".join(sorted(objects)) or "none"
        raise DataError(f"category '{category}' is not in {split_file}; objects there: {listing}")
    for what, ok in (("training", bool(train)), ("normal test", any(s.label == 0 for s in test)),
                     ("anomalous test", any(s.label == 1 for s in test))):
        if not ok:
            raise DataError(f"{split_file} lists no {what} images of '{category}'; image AUROC needs normal "
                            "training images and both normal and anomalous test images")
    train.sort(key=lambda s: s.image_path.name)
    test.sort(key=lambda s: (s.defect_type, s.image_path.name))
    return CategoryIndex(root=root, category=category, train=train, test=test)
