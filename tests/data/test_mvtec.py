"""MVTec indexing and loading: every failure names the path at fault and what was expected."""

from __future__ import annotations

import os
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from anobench.data import (
    MVTEC_CATEGORIES,
    MVTEC_OBJECTS,
    MVTEC_TEXTURES,
    CategoryIndex,
    Sample,
    check_decodable,
    index_category,
    load_image,
    load_mask,
    resolve_root,
)
from anobench.errors import AnobenchError, DataError, DataWarning


def _png(path: Path, size: tuple[int, int] = (20, 16), mode: str = "RGB", value: int = 120) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if mode == "RGB":
        Image.new("RGB", size, (value, value // 2, 30)).save(path)
    else:
        Image.new(mode, size, value).save(path)
    return path


def _mask(path: Path, size: tuple[int, int] = (20, 16)) -> Path:
    arr = np.zeros((size[1], size[0]), np.uint8)
    arr[2:5, 3:7] = 255
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)
    return path


def make_tree(root: Path, category: str = "widget") -> Path:
    """A tiny valid category: 3 train, 2 good test, 2 scratch + 1 dent with masks."""
    folder = root / category
    for i in range(3):
        _png(folder / "train" / "good" / f"{i:03d}.png")
    for i in range(2):
        _png(folder / "test" / "good" / f"{i:03d}.png")
    for defect, n in (("scratch", 2), ("dent", 1)):
        for i in range(n):
            _png(folder / "test" / defect / f"{i:03d}.png")
            _mask(folder / "ground_truth" / defect / f"{i:03d}_mask.png")
    return folder


def test_category_constants() -> None:
    assert len(MVTEC_CATEGORIES) == 15 and len(set(MVTEC_CATEGORIES)) == 15
    assert set(MVTEC_TEXTURES) == {"carpet", "grid", "leather", "tile", "wood"}
    assert set(MVTEC_OBJECTS) | set(MVTEC_TEXTURES) == set(MVTEC_CATEGORIES)
    assert not set(MVTEC_OBJECTS) & set(MVTEC_TEXTURES)
    assert issubclass(DataError, AnobenchError)


def test_valid_tree_is_indexed_in_deterministic_order(tmp_path: Path) -> None:
    folder = make_tree(tmp_path)
    (folder / "test" / "good" / ".hidden.png").write_bytes(b"junk")  # hidden files are skipped
    (folder / "test" / "good" / "notes.txt").write_text("not an image")
    _png(folder / "train" / "good" / "003.PNG")  # upper-case suffix accepted
    _png(folder / "train" / "good" / "004.jpg")
    index = index_category(tmp_path, "widget")
    assert isinstance(index, CategoryIndex) and index.category == "widget" and index.root == tmp_path
    assert [s.image_path.name for s in index.train] == ["000.png", "001.png", "002.png", "003.PNG", "004.jpg"]
    assert all(s.label == 0 and s.mask_path is None and s.defect_type == "good" for s in index.train)
    assert [(s.defect_type, s.image_path.name) for s in index.test] == [
        ("dent", "000.png"),
        ("good", "000.png"),
        ("good", "001.png"),
        ("scratch", "000.png"),
        ("scratch", "001.png"),
    ]
    dent = index.test[0]
    assert dent == Sample(folder / "test" / "dent" / "000.png", folder / "ground_truth" / "dent" / "000_mask.png", 1, "dent")
    assert [s.label for s in index.test] == [1, 0, 0, 1, 1]


def test_missing_root_says_how_to_set_it(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere"
    with pytest.raises(DataError) as info:
        index_category(missing, "bottle")
    message = str(info.value)
    assert str(missing) in message and "data.root=" in message and "ANOBENCH_MVTEC_ROOT" in message


def test_missing_category_lists_existing_ones(tmp_path: Path) -> None:
    make_tree(tmp_path, "widget")
    make_tree(tmp_path, "gadget")
    (tmp_path / ".cache").mkdir()
    with pytest.raises(DataError) as info:
        index_category(tmp_path, "bottle")
    message = str(info.value)
    assert str(tmp_path / "bottle") in message and "'bottle'" in message
    assert "gadget, widget" in message and ".cache" not in message


def test_missing_and_empty_train_folder(tmp_path: Path) -> None:
    folder = make_tree(tmp_path)
    for p in (folder / "train" / "good").iterdir():
        p.unlink()
    (folder / "train" / "good" / "readme.txt").write_text("no images here")
    with pytest.raises(DataError, match=f"{folder / 'train' / 'good'}.* has no images"):
        index_category(tmp_path, "widget")
    (folder / "train" / "good" / "readme.txt").unlink()
    (folder / "train" / "good").rmdir()
    with pytest.raises(DataError, match=f"{folder / 'train' / 'good'} does not exist"):
        index_category(tmp_path, "widget")


def test_missing_test_folder(tmp_path: Path) -> None:
    folder = tmp_path / "widget"
    _png(folder / "train" / "good" / "000.png")
    with pytest.raises(DataError, match=f"{folder / 'test'} does not exist"):
        index_category(tmp_path, "widget")


def test_defective_image_without_mask_names_both_paths(tmp_path: Path) -> None:
    folder = make_tree(tmp_path)
    _png(folder / "test" / "scratch" / "002.png")
    with pytest.raises(DataError) as info:
        index_category(tmp_path, "widget")
    message = str(info.value)
    assert str(folder / "test" / "scratch" / "002.png") in message
    assert str(folder / "ground_truth" / "scratch" / "002_mask.png") in message


def test_mask_without_image_is_ignored_with_a_warning_naming_it(tmp_path: Path) -> None:
    folder = make_tree(tmp_path)
    orphan = _mask(folder / "ground_truth" / "scratch" / "007_mask.png")
    with pytest.warns(DataWarning, match=str(orphan)):
        index = index_category(tmp_path, "widget")
    assert len(index.test) == 5


def test_a_complete_tree_indexes_without_warnings(tmp_path: Path) -> None:
    make_tree(tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("error", DataWarning)
        index_category(tmp_path, "widget")


def test_test_split_without_good_images_is_an_error(tmp_path: Path) -> None:
    folder = make_tree(tmp_path)
    shutil.rmtree(folder / "test" / "good")
    with pytest.raises(DataError, match=r"test folder .*widget/test has no good images"):
        index_category(tmp_path, "widget")


def test_test_split_without_defects_is_an_error(tmp_path: Path) -> None:
    folder = make_tree(tmp_path)
    for defect in ("scratch", "dent"):
        shutil.rmtree(folder / "test" / defect)
    shutil.rmtree(folder / "ground_truth")
    with pytest.raises(DataError, match=r"test folder .*widget/test has no defective images"):
        index_category(tmp_path, "widget")


@pytest.mark.parametrize("victim", ["test/good/001.png", "ground_truth/dent/000_mask.png", "train/good/002.png"])
def test_every_image_and_mask_is_verified_before_training(tmp_path: Path, victim: str) -> None:
    """A truncated file anywhere in the category is found by check_decodable (which the datamodule runs in
    setup, before any training step), and the error names it."""
    folder = make_tree(tmp_path)
    index = index_category(tmp_path, "widget")
    check_decodable(index)  # the intact tree passes
    path = folder / victim
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match=f"cannot read {path}.*nothing was trained"):
        check_decodable(index)


def test_datamodule_setup_checks_every_file_before_training(tmp_path: Path) -> None:
    from anobench.data.datamodule import AnomalyDataModule

    folder = make_tree(tmp_path)
    bad = folder / "test" / "scratch" / "001.png"
    bad.write_bytes(b"not a png at all")
    module = AnomalyDataModule(dataset="folder", root=str(folder), category="widget", image_size=16)
    with pytest.raises(DataError, match=str(bad)):
        module.setup("fit")


def test_mask_size_mismatch_names_both_files_and_sizes(tmp_path: Path) -> None:
    folder = make_tree(tmp_path)
    _mask(folder / "ground_truth" / "dent" / "000_mask.png", size=(10, 8))
    with pytest.raises(DataError) as info:
        index_category(tmp_path, "widget")
    message = str(info.value)
    assert str(folder / "ground_truth" / "dent" / "000_mask.png") in message
    assert str(folder / "test" / "dent" / "000.png") in message
    assert "10x8" in message and "20x16" in message


def test_corrupt_image_names_the_file(tmp_path: Path) -> None:
    bad = tmp_path / "bad.png"
    bad.write_bytes(np.random.default_rng(0).integers(0, 256, 500, dtype=np.uint8).tobytes())
    with pytest.raises(DataError, match=str(bad)):
        load_image(bad)
    # a truncated PNG (valid header, missing data) fails at load(), still naming the file
    good = _png(tmp_path / "good.png", size=(64, 64))
    noisy = np.random.default_rng(1).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    Image.fromarray(noisy).save(good)
    truncated = tmp_path / "truncated.png"
    truncated.write_bytes(good.read_bytes()[:400])
    with pytest.raises(DataError, match=str(truncated)):
        load_image(truncated)
    with pytest.raises(DataError, match=str(tmp_path / "absent.png")):
        load_image(tmp_path / "absent.png")


def test_corrupt_defective_image_fails_at_indexing(tmp_path: Path) -> None:
    folder = make_tree(tmp_path)
    (folder / "test" / "dent" / "000.png").write_bytes(b"\x00" * 64)
    with pytest.raises(DataError, match=str(folder / "test" / "dent" / "000.png")):
        index_category(tmp_path, "widget")


@pytest.mark.parametrize("mode", ["L", "RGBA", "P", "LA", "I;16", "1"])
def test_any_mode_loads_as_rgb(tmp_path: Path, mode: str) -> None:
    path = tmp_path / f"img_{mode.replace(';', '')}.png"
    value = {"I;16": 40000, "1": 1}.get(mode, 100)
    img = Image.new(mode, (12, 10), value if mode not in ("RGBA", "LA") else None)
    if mode == "RGBA":
        img = Image.new("RGBA", (12, 10), (100, 100, 100, 60))
    elif mode == "LA":
        img = Image.new("LA", (12, 10), (100, 60))
    elif mode == "P":
        img = Image.new("RGB", (12, 10), (100, 100, 100)).convert("P", palette=Image.Palette.ADAPTIVE)
    img.save(path)
    out = load_image(path)
    arr = np.asarray(out)
    assert out.mode == "RGB" and arr.shape == (10, 12, 3)
    expected = {"I;16": round(40000 / 65535 * 255), "1": 255}.get(mode, 100)
    assert abs(int(arr[0, 0, 0]) - expected) <= 1, (mode, arr[0, 0])


def test_grayscale_and_rgba_categories_index_and_load(tmp_path: Path) -> None:
    folder = tmp_path / "screwish"
    _png(folder / "train" / "good" / "000.png", mode="L")
    Image.new("RGBA", (20, 16), (10, 200, 30, 128)).save(folder / "train" / "good" / "001.png")
    _png(folder / "test" / "good" / "000.png", mode="L")
    _png(folder / "test" / "dent" / "000.png", mode="L")
    _mask(folder / "ground_truth" / "dent" / "000_mask.png")
    index = index_category(tmp_path, "screwish")
    for sample in index.train + index.test:
        assert np.asarray(load_image(sample.image_path)).shape == (16, 20, 3)


def test_load_mask_bool_at_original_size(tmp_path: Path) -> None:
    path = _mask(tmp_path / "m.png", size=(20, 16))
    mask = load_mask(path, expected_size=(20, 16))
    assert mask.dtype == bool and mask.shape == (16, 20) and mask.sum() == 12
    assert load_mask(path).shape == (16, 20)
    with pytest.raises(DataError, match=rf"{path}.*20x16.*expected 30x16"):
        load_mask(path, expected_size=(30, 16))
    bad = tmp_path / "bad_mask.png"
    bad.write_bytes(b"not a png")
    with pytest.raises(DataError, match=str(bad)):
        load_mask(bad)


def test_resolve_root(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("ANOBENCH_MVTEC_ROOT", raising=False)
    assert resolve_root(tmp_path) == tmp_path
    assert resolve_root(str(tmp_path)) == tmp_path
    with pytest.raises(DataError) as info:
        resolve_root(None)
    assert "data.root=" in str(info.value) and "ANOBENCH_MVTEC_ROOT" in str(info.value)
    monkeypatch.setenv("ANOBENCH_MVTEC_ROOT", os.fspath(tmp_path / "env"))
    assert resolve_root(None) == tmp_path / "env"
    assert resolve_root(tmp_path / "explicit") == tmp_path / "explicit"
