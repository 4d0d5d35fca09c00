"""Issue 29's acceptance run: a user's own folder of JPEGs without masks, every method, its own leaderboard section.

The folder is what a user with product photos has: 20 good training JPEGs, 5 good and 5 defective test JPEGs,
no ground truth. Every registered method trains (2 steps) and evaluates on it through the run pipeline; each
result holds image metrics and null pixel metrics with the reason; the leaderboard gives the dataset its own
section and Mean, and the MVTec AD Mean of a committed bottle result is unchanged by it.
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from PIL import Image

from anobench.config import config_dir
from anobench.data.synthetic import generate_category
from anobench.methods import list_methods
from anobench.results.leaderboard import build_leaderboard, collect_results
from anobench.tasks import run
from tests.methods.fitting import PER_METHOD

PIXEL_METRICS = ("pixel_auroc", "pro")
IMAGE_METRICS = ("image_auroc", "image_auroc_map_max")
# a small input keeps the 8 fits quick; Patch SVDD's K=64 position task needs a patch and its neighbours
SMALLEST_SIZE = {"patch_svdd": 192}
COMMITTED_BOTTLE = Path(__file__).resolve().parents[1] / "results" / "suites" / "cpu_reduced" / "runs"


@pytest.fixture(scope="module")
def widgets(tmp_path_factory) -> Path:
    """20 good training JPEGs, test/good (5) and test/scratch (5) JPEGs, no masks: a user's own product folder."""
    source = generate_category(tmp_path_factory.mktemp("generated"), "washer", seed=0, image_size=64, n_train=20,
                               n_test_good=5, n_test_per_defect=2)
    root = tmp_path_factory.mktemp("own") / "widgets"
    defective = sorted(p for d in sorted((source / "test").iterdir()) if d.name != "good" for p in d.iterdir())[:5]
    for folder, images in (("train/good", sorted((source / "train" / "good").iterdir())),
                           ("test/good", sorted((source / "test" / "good").iterdir())),
                           ("test/scratch", defective)):
        (root / folder).mkdir(parents=True)
        for i, path in enumerate(images):
            with Image.open(path) as im:
                im.convert("RGB").save(root / folder / f"{i:03d}.jpg", quality=95)
    assert len(list((root / "train" / "good").iterdir())) == 20 and len(defective) == 5
    return root


def _compose(method: str, root: Path, results: Path):
    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        return compose(config_name="train", overrides=[
            f"method={method}", "data=folder", f"data.root={root}", "data.name=widgets", "trainer=smoke",
            "method.input.batch_size=4", "method.input.eval_batch_size=4",
            f"paths.results_dir={results}", f"paths.data_dir={results.parent / 'data'}",
            f"method.input.image_size={SMALLEST_SIZE.get(method, 64)}", *PER_METHOD.get(method, [])])


def test_every_method_trains_and_evaluates_on_an_own_folder_without_masks(widgets, tmp_path):
    results = tmp_path / "results"
    for method in list_methods():
        cfg = _compose(method, widgets, results)
        record = run.execute(cfg, results / "runs" / method, "train")
        assert record["status"] == "ok", (method, record.get("error"))
        stored = json.loads((results / "runs" / method / "result.json").read_text())
        assert stored["dataset"] == "widgets" and stored["category"] == "widgets", method
        for metric in IMAGE_METRICS:
            assert 0.0 <= stored["metrics"][metric] <= 1.0, (method, metric, stored["metrics"])
        for metric in PIXEL_METRICS:
            assert stored["metrics"][metric] is None, (method, metric, stored["metrics"])
        assert "mask" in stored["evaluation"]["pixel_metrics"], stored["evaluation"]

    # the committed bottle result of one method beside the widgets results: two sections, two Means
    bottle = next(p for p in sorted(COMMITTED_BOTTLE.rglob("result.json"))
                  if json.loads(p.read_text())["method"] == "patch_svdd")
    shutil.copytree(bottle.parent, results / "runs" / "committed_bottle")
    records, _ = collect_results(results)
    board = build_leaderboard(records)
    assert {row["dataset"] for row in board.rows} == {"mvtec", "widgets"}
    mean = {row["dataset"]: row for row in board.rows if row["category"] == "Mean"}
    bottle_row = next(row for row in board.rows if row["dataset"] == "mvtec" and row["kind"] != "mean")
    bottle_cell = bottle_row[("patch_svdd", "image_auroc")]
    assert bottle_cell.mean is not None and math.isclose(mean["mvtec"][("patch_svdd", "image_auroc")].mean,
                                                         bottle_cell.mean)
    assert mean["mvtec"][("patch_svdd", "image_auroc")].of == 1  # the widgets row is not an MVTec AD category
    assert len(board.methods) == len(list_methods())
    for method in board.methods:
        assert mean["widgets"][(method, "image_auroc")].mean is not None, method
        assert mean["widgets"][(method, "pixel_auroc")].mean is None, method
