"""MPDD, BTAD, VisA (split CSV and converted) and your own folder, on small replicas of each release's layout
written here (where each layout fact comes from: anobench/data/layouts.py's docstring), and their configs."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from omegaconf import OmegaConf
from PIL import Image

from anobench.config import config_dir, group_options
from anobench.data import (
    BTAD_CATEGORIES,
    MPDD_CATEGORIES,
    VISA_CATEGORIES,
    AnomalyDataModule,
    index_dataset,
    index_visa_csv,
    load_image,
)
from anobench.data.mvtec import IMAGE_SUFFIXES
from anobench.errors import ConfigError, DataError, DataWarning

SIZE = (32, 32)
FORMATS = {".png": "PNG", ".jpg": "JPEG", ".JPG": "JPEG", ".jpeg": "JPEG", ".bmp": "BMP", ".tif": "TIFF",
           ".tiff": "TIFF"}


def _image(path: Path, value: int = 120) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(value)
    Image.fromarray(rng.integers(0, 256, (SIZE[1], SIZE[0], 3), dtype=np.uint8)).save(path, format=FORMATS[path.suffix])
    return path


def _mask(path: Path, on: int = 255) -> Path:
    """A defect square; `on` is the value of defect pixels (VisA's masks are not 0/255)."""
    arr = np.zeros((SIZE[1], SIZE[0]), np.uint8)
    arr[4:10, 5:12] = on
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path, format=FORMATS[path.suffix])
    return path


def _mvtec_like(folder: Path, *, normal: str = "good", defects: dict[str, int] | None = None, ext: str = ".png",
                mask_dir: str | None = "ground_truth", mask_name: str = "{stem}_mask.png", n_train: int = 3,
                n_good: int = 2) -> Path:
    """train/<normal>, test/<normal>, test/<defect> and (mask_dir not None) a mask per defective image."""
    for i in range(n_train):
        _image(folder / "train" / normal / f"{i:03d}{ext}", i)
    for i in range(n_good):
        _image(folder / "test" / normal / f"{i:03d}{ext}", 50 + i)
    for defect, n in (defects or {"crack": 2, "hole": 1}).items():
        for i in range(n):
            _image(folder / "test" / defect / f"{i:03d}{ext}", 100 + i)
            if mask_dir is not None:
                _mask(folder / mask_dir / defect / mask_name.format(stem=f"{i:03d}"))
    return folder


def _summary(index) -> list[tuple[str, str, int, str | None]]:
    return [(s.defect_type, s.image_path.name, s.label, s.mask_path.name if s.mask_path else None) for s in index.test]


# --- MPDD ---------------------------------------------------------------------------------------
def test_mpdd_reads_mvtec_layout(tmp_path: Path) -> None:
    _mvtec_like(tmp_path / "bracket_black", defects={"bend": 2, "scratch": 1})
    index = index_dataset("mpdd", tmp_path, "bracket_black")
    assert len(index.train) == 3 and index.category == "bracket_black" and index.root == tmp_path
    assert _summary(index) == [("bend", "000.png", 1, "000_mask.png"), ("bend", "001.png", 1, "001_mask.png"),
                               ("good", "000.png", 0, None), ("good", "001.png", 0, None),
                               ("scratch", "000.png", 1, "000_mask.png")]
    (tmp_path / "bracket_black" / "ground_truth" / "bend" / "001_mask.png").unlink()
    with pytest.raises(DataError, match=r"test/bend/001.png has no mask; expected .*ground_truth/bend/001_mask.png"):
        index_dataset("mpdd", tmp_path, "bracket_black")


# --- BTAD ---------------------------------------------------------------------------------------
def test_btad_ok_ko_bmp_and_png_with_same_stem_masks(tmp_path: Path) -> None:
    top = tmp_path / "BTech_Dataset_transformed"  # btad.zip's top folder
    _mvtec_like(top / "01", normal="ok", defects={"ko": 2}, ext=".bmp", mask_name="{stem}.png")
    _mvtec_like(top / "02", normal="ok", defects={"ko": 1}, ext=".png", mask_name="{stem}.bmp")
    for root in (tmp_path, top):  # the folder holding 01/ or the one above it
        index = index_dataset("btad", root, "01")
        assert index.root == top and len(index.train) == 3
        assert all(s.defect_type == "good" and s.image_path.suffix == ".bmp" for s in index.train)
        assert _summary(index) == [("good", "000.bmp", 0, None), ("good", "001.bmp", 0, None),
                                   ("ko", "000.bmp", 1, "000.png"), ("ko", "001.bmp", 1, "001.png")]
    assert _summary(index_dataset("btad", tmp_path, "02"))[-1] == ("ko", "000.png", 1, "000.bmp")
    dm = AnomalyDataModule(dataset="btad", category="01", root=str(tmp_path), image_size=16)
    dm.setup()
    assert dm.has_masks and dm.load_mask(3).sum() == 42 and dm.load_mask(0).sum() == 0
    with pytest.raises(DataError, match=r"category '03' not found.*Categories under .*: 01, 02"):
        index_dataset("btad", top, "03")


# --- VisA ---------------------------------------------------------------------------------------
def _visa_release(root: Path, objects: tuple[str, ...] = ("candle", "cashew")) -> Path:
    """The release as extracted: <object>/Data/Images/{Normal,Anomaly}/*.JPG, Data/Masks/Anomaly/*.png (values 1,
    not 255) and split_csv/1cls.csv in the authors' column order, rows not sorted."""
    rows = ["object,split,label,image,mask"]
    for obj in objects:
        data = root / obj / "Data"
        for name, split in (("0003", "train"), ("0001", "train"), ("0002", "train"), ("0005", "test"),
                            ("0004", "test")):
            _image(data / "Images" / "Normal" / f"{name}.JPG", int(name))
            rows.append(f"{obj},{split},normal,{obj}/Data/Images/Normal/{name}.JPG,")
        for name in ("001", "000"):
            _image(data / "Images" / "Anomaly" / f"{name}.JPG", 200 + int(name))
            _mask(data / "Masks" / "Anomaly" / f"{name}.png", on=1)
            rows.append(f"{obj},test,anomaly,{obj}/Data/Images/Anomaly/{name}.JPG,{obj}/Data/Masks/Anomaly/{name}.png")
    (root / "split_csv").mkdir(parents=True, exist_ok=True)
    (root / "split_csv" / "1cls.csv").write_text("\n".join(rows) + "\n", encoding="utf-8")
    return root


def _visa_convert(release: Path, out: Path) -> Path:
    """What spot-diff's prepare_data.py (1cls) writes: train/good, test/good|bad, ground_truth/bad/<mask name>,
    masks binarised to 0/255."""
    for line in (release / "split_csv" / "1cls.csv").read_text().splitlines()[1:]:
        obj, split, label, image, mask = line.split(",")
        label = "good" if label == "normal" else "bad"
        target = out / obj / split / label / Path(image).name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(release / image, target)
        if split == "test" and label == "bad":
            arr = np.asarray(Image.open(release / mask)).copy()
            arr[arr != 0] = 255
            (out / obj / "ground_truth" / "bad").mkdir(parents=True, exist_ok=True)
            Image.fromarray(arr).save(out / obj / "ground_truth" / "bad" / Path(mask).name)
    return out


def test_visa_split_csv_form(tmp_path: Path) -> None:
    root = _visa_release(tmp_path / "VisA")
    index = index_dataset("visa", root, "candle")
    assert [s.image_path.name for s in index.train] == ["0001.JPG", "0002.JPG", "0003.JPG"]  # sorted, not CSV order
    assert _summary(index) == [("bad", "000.JPG", 1, "000.png"), ("bad", "001.JPG", 1, "001.png"),
                               ("good", "0004.JPG", 0, None), ("good", "0005.JPG", 0, None)]
    assert all("candle" in s.image_path.parts for s in index.train + index.test)  # cashew's rows left out
    dm = AnomalyDataModule(dataset="visa", category="candle", root=str(root), image_size=16)
    assert dm.has_masks
    assert dm.load_mask(0).sum() == 42  # mask value 1 counts as defect


def test_visa_converted_form_indexes_like_the_csv(tmp_path: Path) -> None:
    release = _visa_release(tmp_path / "VisA")
    from_csv = _summary(index_dataset("visa", release, "cashew"))
    anomalib_root = tmp_path / "anomalib_visa"  # anomalib: <root>/visa_pytorch/<category>
    _visa_convert(release, anomalib_root / "visa_pytorch")
    for root in (anomalib_root, anomalib_root / "visa_pytorch"):
        index = index_dataset("visa", root, "cashew")
        assert index.root == anomalib_root / "visa_pytorch"
        assert _summary(index) == from_csv and len(index.train) == 3
    prepared = _visa_convert(release, tmp_path / "VisA_pytorch" / "1cls")  # spot-diff's --save-folder/1cls
    assert _summary(index_dataset("visa", prepared.parent, "cashew")) == from_csv


@pytest.mark.parametrize(("edit", "message"), [
    (lambda t: t.replace("object,split,label,image,mask", "object,set,label,image_path,mask_path"),
     r"starts with object,set,.*expected VisA's split file with the header object,split,label,image,mask"),
    (lambda t: t.replace("candle,test,anomaly", "candle,test,bad", 1), r"line \d+: label 'bad'; expected normal or "),
    (lambda t: t.replace("candle,test,normal", "candle,val,normal", 1), r"line \d+: split 'val'"),
    (lambda t: t.replace("candle/Data/Masks/Anomaly/001.png", ""), r"Anomaly/001.JPG .*has no mask"),
    (lambda t: t.replace("candle/Data/Images/Normal/0003.JPG", "candle/Data/Images/Normal/9999.JPG"),
     r"9999.JPG listed in .*1cls.csv line 2 does not exist"),
    (lambda t: t.replace("candle,", "pcb1,"), r"category 'candle' is not in .*objects there: cashew, pcb1"),
])
def test_visa_split_file_errors_name_file_and_line(tmp_path: Path, edit, message: str) -> None:
    root = _visa_release(tmp_path)
    csv_path = root / "split_csv" / "1cls.csv"
    csv_path.write_text(edit(csv_path.read_text()))
    with pytest.raises(DataError, match=message):
        index_visa_csv(root, "candle")


def test_visa_root_without_either_form_says_what_it_expects(tmp_path: Path) -> None:
    (tmp_path / "candle").mkdir()
    with pytest.raises(DataError, match=r"no VisA category 'candle'.*split_csv/1cls.csv.*train/good"):
        index_dataset("visa", tmp_path, "candle")


# --- your own folder ----------------------------------------------------------------------------
def _folder_dm(root: Path, **kwargs) -> AnomalyDataModule:
    return AnomalyDataModule(dataset="folder", category=root.name, root=str(root), image_size=16, **kwargs)


def test_folder_without_masks_gives_image_metrics_only(tmp_path: Path) -> None:
    root = _mvtec_like(tmp_path / "screws", defects={"abnormal": 3}, ext=".jpg", mask_dir=None)
    dm = _folder_dm(root)
    dm.setup()
    assert dm.name == "custom" and dm.identity == ("folder", "screws", str(root), 16, "bilinear")
    assert len(dm.index.train) == 3 and [s.label for s in dm.test_samples] == [1, 1, 1, 0, 0]
    assert all(s.mask_path is None for s in dm.test_samples) and not dm.has_masks
    assert dm.load_mask(0).shape == SIZE[::-1] and not dm.load_mask(0).any()


def test_folder_with_masks_and_every_image_format(tmp_path: Path) -> None:
    root = tmp_path / "parts"
    for i, ext in enumerate((".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")):
        _image(root / "train" / "good" / f"t{i}{ext}", i)
    _image(root / "test" / "good" / "g0.tif", 7)
    _image(root / "test" / "dent" / "d0.tiff", 8)
    _mask(root / "ground_truth" / "dent" / "d0_mask.png")
    _image(root / "test" / "dent" / "d1.jpg", 9)
    _mask(root / "ground_truth" / "dent" / "d1_mask.bmp")
    dm = _folder_dm(root, name="parts_line_3")
    assert dm.has_masks and len(dm.index.train) == 6 and dm.name == "parts_line_3"
    assert _summary(dm.index) == [("dent", "d0.tiff", 1, "d0_mask.png"), ("dent", "d1.jpg", 1, "d1_mask.bmp"),
                                  ("good", "g0.tif", 0, None)]
    assert next(iter(dm.test_dataloader()))["image"].shape == (3, 3, 16, 16)


def test_folder_names_normal_and_mask_folders(tmp_path: Path) -> None:
    root = _mvtec_like(tmp_path / "pcbs", normal="ok", defects={"bad": 2}, mask_dir="masks", mask_name="{stem}.png")
    dm = _folder_dm(root, normal_dir="ok", mask_dir="masks", mask_suffix="")
    assert dm.has_masks and [s.defect_type for s in dm.test_samples] == ["bad", "bad", "good", "good"]
    with pytest.raises(DataError, match=r"train/good does not exist"):
        _folder_dm(root).setup()


def test_folder_with_some_masks_names_the_first_image_without(tmp_path: Path) -> None:
    root = _mvtec_like(tmp_path / "screws", defects={"crack": 2, "hole": 2})
    (root / "ground_truth" / "hole" / "000_mask.png").unlink()
    (root / "ground_truth" / "crack" / "001_mask.png").unlink()
    with pytest.raises(DataError) as info:
        _folder_dm(root).setup()
    message = str(info.value)
    assert f"{root / 'test' / 'crack' / '001.png'} has no mask" in message
    assert str(root / "ground_truth" / "crack" / "001_mask.png") in message and "2 of the 4" in message


def test_folder_masks_named_otherwise_are_not_taken_for_no_masks(tmp_path: Path) -> None:
    root = _mvtec_like(tmp_path / "screws", defects={"crack": 2}, mask_name="{stem}.png")
    with pytest.raises(DataError, match=r"no defective test image has a mask.*data.mask_suffix"):
        _folder_dm(root).setup()
    assert _folder_dm(root, mask_suffix="").has_masks


def test_folder_root_errors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(DataError, match=r"no your own dataset \(data=folder\) root given: pass data.root="):
        AnomalyDataModule(dataset="folder", category="x").setup()
    with pytest.raises(DataError, match=r"data.root=.*nowhere does not exist"):
        _folder_dm(tmp_path / "nowhere").setup()
    _mvtec_like(tmp_path / "all" / "screws")  # a parent of category folders: point to the right one
    with pytest.raises(DataError, match=r"has no train/ folder; it holds screws with train/ inside: pass data.root="):
        _folder_dm(tmp_path / "all").setup()


@pytest.mark.parametrize("victim", ["train/good/001.jpg", "test/abnormal/000.jpg", "test/good/000.tif"])
def test_corrupt_jpeg_or_tiff_is_found_before_training(tmp_path: Path, victim: str) -> None:
    """PIL's verify() passes a truncated JPEG/TIFF/BMP: setup decodes those in full, so the error comes before any
    training step and names the file."""
    root = _mvtec_like(tmp_path / "screws", defects={"abnormal": 2}, ext=".jpg", mask_dir=None)
    (root / "test" / "good" / "000.jpg").unlink()
    _image(root / "test" / "good" / "000.tif", 3)
    _folder_dm(root).setup()  # intact: fine
    path = root / victim
    data = path.read_bytes()
    path.write_bytes(data[: len(data) * 2 // 3])
    with pytest.raises(DataError, match=f"cannot read {path}.*nothing was trained"):
        _folder_dm(root).setup()


def test_tiff_images_load_as_rgb(tmp_path: Path) -> None:
    assert {".tif", ".tiff"} <= IMAGE_SUFFIXES
    path = _image(tmp_path / "x.tiff", 5)
    assert np.array_equal(np.asarray(load_image(path)), np.asarray(Image.open(path).convert("RGB")))
    grey = tmp_path / "g.tif"
    Image.new("I;16", SIZE, 40000).save(grey)
    assert np.asarray(load_image(grey)).shape == (32, 32, 3)


def test_orphan_masks_warn_for_every_layout(tmp_path: Path) -> None:
    root = _mvtec_like(tmp_path / "screws", defects={"crack": 1}, mask_name="{stem}.png")
    _mask(root / "ground_truth" / "crack" / "007.png")
    with pytest.warns(DataWarning, match="007.png"):
        _folder_dm(root, mask_suffix="").setup()


# --- datamodule checks --------------------------------------------------------------------------
@pytest.mark.parametrize(("dataset", "category", "title"), [
    ("mvtec", "widget", "MVTec AD"), ("visa", "bottle", "VisA"), ("btad", "04", "BTAD"), ("mpdd", "bracket", "MPDD")])
def test_category_outside_a_benchmark_points_to_data_folder(dataset: str, category: str, title: str) -> None:
    with pytest.raises(ConfigError) as info:
        AnomalyDataModule(dataset=dataset, category=category)
    message = str(info.value)
    assert f"data.category='{category}' is not a {title} category" in message
    assert "data=folder data.root=<folder>" in message and "docs/usage.md" in message


def test_btad_category_given_as_a_number_says_to_quote_it() -> None:
    with pytest.raises(ConfigError, match=r"data.category=1 is not a BTAD category \(quote it"):
        AnomalyDataModule(dataset="btad", category=1)


@pytest.mark.parametrize("name", ["mvtec", "VisA", "btad", "mpdd", "synthetic"])
def test_own_dataset_may_not_take_a_builtin_name(name: str) -> None:
    with pytest.raises(ConfigError, match=rf"data.name='{name}' is the name of a built-in dataset"):
        AnomalyDataModule(dataset="folder", category="x", root="r", name=name)


def test_folder_options_only_for_data_folder() -> None:
    with pytest.raises(ConfigError, match=r"data.name, data.normal_dir only apply to data=folder"):
        AnomalyDataModule(dataset="mvtec", category="bottle", name="mine", normal_dir="ok")


@pytest.mark.parametrize(("dataset", "env"), [("visa", "ANOBENCH_VISA_ROOT"), ("btad", "ANOBENCH_BTAD_ROOT"),
                                              ("mpdd", "ANOBENCH_MPDD_ROOT")])
def test_each_dataset_root_from_its_environment_variable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                         dataset: str, env: str) -> None:
    category = {"visa": "candle", "btad": "01", "mpdd": "tubes"}[dataset]
    monkeypatch.delenv(env, raising=False)
    with pytest.raises(DataError, match=rf"pass data.root=.* or set the environment variable {env}"):
        AnomalyDataModule(dataset=dataset, category=category).setup()
    if dataset == "visa":
        _visa_release(tmp_path, ("candle",))
    else:
        _mvtec_like(tmp_path / category, **({"normal": "ok", "defects": {"ko": 1}, "mask_name": "{stem}.png"}
                                            if dataset == "btad" else {}))
    monkeypatch.setenv(env, os.fspath(tmp_path))
    dm = AnomalyDataModule(dataset=dataset, category=category, image_size=16)
    dm.setup()
    assert dm.index.root == tmp_path and dm.has_masks


# --- configs ------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def replicas(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Every category of VisA (release form), BTAD and MPDD, one image per class."""
    base = tmp_path_factory.mktemp("replicas")
    _visa_release(base / "visa", VISA_CATEGORIES)
    small = dict(n_train=1, n_good=1)
    for category in BTAD_CATEGORIES:
        _mvtec_like(base / "btad" / category, normal="ok", defects={"ko": 1}, ext=".bmp", mask_name="{stem}.png",
                    **small)
    for category in MPDD_CATEGORIES:
        _mvtec_like(base / "mpdd" / category, defects={"hole": 1}, **small)
    _mvtec_like(base / "own" / "my_screws", defects={"abnormal": 2}, ext=".jpg", mask_dir=None)
    return {"visa": base / "visa", "btad": base / "btad", "mpdd": base / "mpdd", "folder": base / "own" / "my_screws"}


CATEGORIES = {"visa": VISA_CATEGORIES, "btad": BTAD_CATEGORIES, "mpdd": MPDD_CATEGORIES}


def test_every_category_has_a_config_and_the_sweep_lists_them() -> None:
    options = group_options("data")
    for dataset, categories in CATEGORIES.items():
        assert {o for o in options if o.startswith(f"{dataset}/")} == {f"{dataset}/{c}" for c in categories}
        sweep = OmegaConf.load(config_dir() / "sweep" / f"{dataset}.yaml")
        assert sweep.hydra.sweeper.params.data.split(",") == [f"{dataset}/{c}" for c in categories]
    assert "folder" in options


def test_every_dataset_config_composes_and_instantiates_on_a_replica(replicas: dict[str, Path]) -> None:
    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        for dataset, categories in CATEGORIES.items():
            for category in categories:
                cfg = compose(config_name="train", overrides=[f"data={dataset}/{category}",
                                                              f"paths.{dataset}_root={replicas[dataset]}"])
                assert cfg.data.category == category and isinstance(cfg.data.category, str)
                assert "name" not in cfg.data  # built-in data configs keep their keys (and config hashes)
                dm = instantiate(cfg.data, _convert_="all")
                assert isinstance(dm, AnomalyDataModule) and (dm.dataset, dm.category) == (dataset, category)
                dm.setup()
                assert dm.has_masks and len(dm.test_samples) == {"visa": 4}.get(dataset, 2)
        cfg = compose(config_name="train", overrides=["data=folder", f"data.root={replicas['folder']}"])
        assert (cfg.data.dataset, cfg.data.category, cfg.data.name) == ("folder", "my_screws", "custom")
        dm = instantiate(cfg.data, _convert_="all")
        dm.setup()
        assert dm.name == "custom" and not dm.has_masks and len(dm.test_samples) == 4
        cfg = compose(config_name="train", overrides=["data=folder", f"data.root={replicas['folder']}/",
                                                      "data.name=screws", "data.category=line1"])
        assert (cfg.data.category, cfg.data.name) == ("line1", "screws")
        cfg = compose(config_name="train", overrides=["data=folder", "data.name=mvtec"])
        with pytest.raises(Exception, match="built-in dataset"):
            instantiate(cfg.data, _convert_="all")
