"""Synthetic generator: MVTec layout, mask pairing, determinism, difficulty, atomic publishing."""

from __future__ import annotations

import hashlib
import json
import multiprocessing as mp
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from anobench.data import synthetic
from anobench.data.synthetic import (
    MANIFEST_NAME,
    SYNTHETIC_CATEGORIES,
    SYNTHETIC_DEFECTS,
    ensure_synthetic,
    generate_category,
    render_sample,
)
from anobench.errors import DataError

SMALL = dict(image_size=64, n_train=3, n_test_good=2, n_test_per_defect=2)


def _tree_digest(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


@pytest.fixture(scope="module")
def weave_default(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return generate_category(tmp_path_factory.mktemp("syn_default"), "weave", seed=0)


def test_categories_are_two_textures_and_two_objects() -> None:
    assert SYNTHETIC_CATEGORIES == {"weave": "texture", "granite": "texture", "washer": "object", "tablet": "object"}
    for name, defects in SYNTHETIC_DEFECTS.items():
        assert len(defects) >= 3, name
        assert set(defects) <= {"scratch", "hole", "stain", "deformation", "crack"}


def test_default_layout_is_exact_mvtec(weave_default: Path) -> None:
    root = weave_default
    assert root.name == "weave"
    assert sorted(p.name for p in root.iterdir()) == sorted([MANIFEST_NAME, "ground_truth", "test", "train"])
    assert [p.name for p in (root / "train").iterdir()] == ["good"]
    train = sorted(p.name for p in (root / "train" / "good").iterdir())
    assert train == [f"{i:03d}.png" for i in range(40)]
    assert sorted(p.name for p in (root / "test").iterdir()) == sorted(["good", *SYNTHETIC_DEFECTS["weave"]])
    assert sorted(p.name for p in (root / "ground_truth").iterdir()) == sorted(SYNTHETIC_DEFECTS["weave"])
    assert len(list((root / "test" / "good").iterdir())) == 10
    for defect in SYNTHETIC_DEFECTS["weave"]:
        images = sorted(p.name for p in (root / "test" / defect).iterdir())
        masks = sorted(p.name for p in (root / "ground_truth" / defect).iterdir())
        assert images == [f"{i:03d}.png" for i in range(6)]
        assert masks == [f"{i:03d}_mask.png" for i in range(6)]
        for name in images:
            with Image.open(root / "test" / defect / name) as im:
                assert (im.mode, im.size) == ("RGB", (256, 256))
            mask = Image.open(root / "ground_truth" / defect / name.replace(".png", "_mask.png"))
            assert (mask.mode, mask.size) == ("L", (256, 256))
            values = np.unique(np.asarray(mask))
            assert set(values.tolist()) == {0, 255}, f"{defect}/{name}: mask must be 0/255 and non-empty"
    manifest = json.loads((root / MANIFEST_NAME).read_text())
    assert manifest["seed"] == 0 and manifest["image_size"] == 256 and manifest["n_train"] == 40


@pytest.mark.parametrize("category", list(SYNTHETIC_CATEGORIES))
def test_every_category_layout_and_masks(tmp_path: Path, category: str) -> None:
    folder = generate_category(tmp_path, category, seed=3, image_size=72, n_train=2, n_test_good=1, n_test_per_defect=2)
    assert folder == tmp_path / category
    for defect in SYNTHETIC_DEFECTS[category]:
        for i in range(2):
            image = np.asarray(Image.open(folder / "test" / defect / f"{i:03d}.png"))
            mask = np.asarray(Image.open(folder / "ground_truth" / defect / f"{i:03d}_mask.png"))
            assert image.shape == (72, 72, 3) and mask.shape == (72, 72)
            assert mask.any(), f"{category}/{defect}/{i}: empty mask"
            # the saved files are exactly what render_sample produces
            rendered, rendered_mask, _ = render_sample(category, 3, defect, i, 72)
            assert np.array_equal(image, rendered)
            assert np.array_equal(mask > 0, rendered_mask)


@pytest.mark.parametrize("category", list(SYNTHETIC_CATEGORIES))
def test_mask_is_the_altered_region(category: str) -> None:
    for defect in SYNTHETIC_DEFECTS[category]:
        for i in range(3):
            image, mask, normal = render_sample(category, 1, defect, i, 96)
            changed = (image != normal).any(axis=2)
            assert not (changed & ~mask).any(), f"{category}/{defect}/{i}: pixels changed outside the mask"
            assert changed[mask].mean() > 0.5, f"{category}/{defect}/{i}: mask mostly covers unchanged pixels"
            assert mask.mean() < 0.15, f"{category}/{defect}/{i}: defect covers {mask.mean():.0%} of the image"


def test_same_seed_is_byte_identical_and_other_seed_differs(tmp_path: Path) -> None:
    a = generate_category(tmp_path / "a", "tablet", seed=5, **SMALL)
    b = generate_category(tmp_path / "b", "tablet", seed=5, **SMALL)
    c = generate_category(tmp_path / "c", "tablet", seed=6, **SMALL)
    digest_a, digest_b, digest_c = _tree_digest(a), _tree_digest(b), _tree_digest(c)
    assert digest_a == digest_b
    assert digest_a.keys() == digest_c.keys()
    images = [k for k in digest_a if k.endswith(".png") and "ground_truth" not in k]
    assert all(digest_a[k] != digest_c[k] for k in images)


def test_normal_images_vary() -> None:
    for category in SYNTHETIC_CATEGORIES:
        first = render_sample(category, 0, "train", 0, 64)[0].astype(float)
        second = render_sample(category, 0, "train", 1, 64)[0].astype(float)
        assert np.abs(first - second).mean() > 2.0, f"{category}: normal images are (nearly) identical"


def _auroc(negatives: list[float], positives: list[float]) -> float:
    neg, pos = np.asarray(negatives)[None], np.asarray(positives)[:, None]
    return float((pos > neg).mean() + 0.5 * (pos == neg).mean())


@pytest.mark.parametrize("category", list(SYNTHETIC_CATEGORIES))
def test_defects_are_not_trivially_separable(category: str) -> None:
    size = 64
    goods = [render_sample(category, 0, "good", i, size)[0] for i in range(10)]
    normal_grey = np.concatenate([g.mean(axis=2).ravel() for g in goods])
    low, high = np.percentile(normal_grey, [0.5, 99.5])
    defect_grey, defect_means = [], []
    for defect in SYNTHETIC_DEFECTS[category]:
        for i in range(6):
            image, mask, _ = render_sample(category, 0, defect, i, size)
            defect_grey.append(image.mean(axis=2)[mask])
            defect_means.append(float(image.mean()))
    # altered pixels use intensities that normal images have (no saturated give-away colour)
    d_low, d_high = np.percentile(np.concatenate(defect_grey), [2, 98])
    assert low - 4 <= d_low and d_high <= high + 4, (category, (low, high), (d_low, d_high))
    # a global statistic (mean intensity) does not separate good from defective
    auroc = _auroc([float(g.mean()) for g in goods], defect_means)
    assert 0.1 < auroc < 0.9, f"{category}: mean intensity separates good/defective (AUROC {auroc:.2f})"


def test_unknown_category_lists_valid_names(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="'marble'.*weave, granite, washer, tablet"):
        generate_category(tmp_path, "marble")
    with pytest.raises(DataError, match="marble"):
        ensure_synthetic(tmp_path, "marble")
    assert not (tmp_path / "marble").exists()


def test_bad_parameters_name_the_key(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="n_train=0"):
        generate_category(tmp_path, "weave", n_train=0)
    with pytest.raises(DataError, match="n_trian"):
        ensure_synthetic(tmp_path, "weave", n_trian=3)


def test_ensure_synthetic_is_idempotent_and_regenerates_on_change(tmp_path: Path) -> None:
    folder = ensure_synthetic(tmp_path, "granite", seed=2, **SMALL)
    stamp = (folder / "train" / "good" / "000.png").stat().st_mtime_ns
    marker = folder / "train" / "good" / "extra.txt"
    marker.write_text("kept if not regenerated")
    assert ensure_synthetic(tmp_path, "granite", seed=2, **SMALL) == folder
    assert marker.exists() and (folder / "train" / "good" / "000.png").stat().st_mtime_ns == stamp
    # other parameters -> regenerated (stale files gone, new count)
    ensure_synthetic(tmp_path, "granite", seed=2, **{**SMALL, "n_train": 4})
    assert not marker.exists()
    assert len(list((folder / "train" / "good").glob("*.png"))) == 4
    assert json.loads((folder / MANIFEST_NAME).read_text())["n_train"] == 4
    # a changed generator version also triggers regeneration
    manifest = json.loads((folder / MANIFEST_NAME).read_text())
    manifest["version"] = -1
    (folder / MANIFEST_NAME).write_text(json.dumps(manifest))
    ensure_synthetic(tmp_path, "granite", seed=2, **{**SMALL, "n_train": 4})
    assert json.loads((folder / MANIFEST_NAME).read_text())["version"] == synthetic.GENERATOR_VERSION
    assert [p.name for p in tmp_path.iterdir()] == ["granite"], "temporary folders left behind"


def test_refuses_to_replace_a_folder_it_did_not_write(tmp_path: Path) -> None:
    (tmp_path / "washer" / "train" / "good").mkdir(parents=True)
    with pytest.raises(DataError, match=str(tmp_path / "washer")):
        ensure_synthetic(tmp_path, "washer", **SMALL)
    assert (tmp_path / "washer" / "train" / "good").is_dir()
    assert [p.name for p in tmp_path.iterdir()] == ["washer"]


def test_publish_accepts_an_identical_result_that_won_the_race(tmp_path: Path) -> None:
    params = synthetic._params("weave", 0, **SMALL)
    winner, loser = tmp_path / "weave", tmp_path / ".weave.tmp-loser"
    for folder in (winner, loser):
        folder.mkdir()
        (folder / MANIFEST_NAME).write_text(json.dumps(params))
    (winner / "theirs.txt").write_text("winner")
    assert synthetic._publish(loser, winner, params) == winner
    assert (winner / "theirs.txt").exists() and not loser.exists()


def _worker(root: str, queue: "mp.Queue[str]") -> None:
    try:
        queue.put(str(ensure_synthetic(root, "washer", seed=4, **SMALL)))
    except BaseException as exc:  # report instead of dying silently
        queue.put(f"error: {exc!r}")


def test_concurrent_ensure_synthetic_is_safe(tmp_path: Path) -> None:
    ctx = mp.get_context("fork") if "fork" in mp.get_all_start_methods() else mp.get_context()
    queue = ctx.Queue()
    procs = [ctx.Process(target=_worker, args=(str(tmp_path), queue)) for _ in range(3)]
    for p in procs:
        p.start()
    results = [queue.get(timeout=120) for _ in procs]
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    assert results == [str(tmp_path / "washer")] * 3, results
    assert [p.name for p in tmp_path.iterdir()] == ["washer"], "temporary folders left behind"
    reference = generate_category(tmp_path / "ref", "washer", seed=4, **SMALL)
    assert _tree_digest(tmp_path / "washer") == _tree_digest(reference)


@pytest.mark.parametrize("size", [32, 48])
def test_small_image_sizes_still_get_visible_defects(size: int) -> None:
    for category, defects in SYNTHETIC_DEFECTS.items():
        for defect in defects:
            image, mask, _ = render_sample(category, 0, defect, 0, size)
            assert image.shape == (size, size, 3) and mask is not None and mask.any(), (category, defect)
