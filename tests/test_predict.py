"""`anobench predict` and decision thresholds (issue 28, items 1 and 2).

Every method: a tiny run trained in process (one per method, shared by the module), then predict on the run's own
test images gives the test stage's image scores and maps (upsampled as the evaluator upsamples them) to 1e-6.
Then the input handling (formats, sizes, a corrupt file, exit code), the output folder (nothing half-written),
the thresholds (a number, f1_test, normal_quantile with and without held-out images) and the config hash.
"""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import numpy as np
import pytest
import tifffile
from hydra import compose, initialize_config_dir
from PIL import Image

from anobench.config import config_dir
from anobench.data import AnomalyDataModule
from anobench.errors import ConfigError, DataError
from anobench.metrics.evaluate import upsample_map
from anobench.methods import list_methods
from anobench.results.identity import config_hash
from anobench.tasks import predict as predict_task
from anobench.tasks import run
from anobench.tasks.evaluate import eval_config, load_run_config
from anobench.tasks.thresholds import ThresholdSetting
from tests.methods.fitting import tiny_overrides

REPO = Path(__file__).resolve().parents[1]
# Smaller inputs than the methods' defaults where a method allows them: the run is trained, tested, evaluated and
# predicted, so the CPU time of one forward counts four times over.
IMAGE_SIZE = {"gradcon": 64, "memae": 64, "mnad": 64, "ognet": 64, "synthcp": 64, "patch_svdd": 192,
              "uninformed_students": 72}


def _compose(name: str, overrides: list[str]):
    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        return compose(config_name=name, overrides=overrides)


class Runs:
    """Tiny trained runs, one per (method, extra overrides), shared by the tests of this module."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.data = root / "data"
        self.cache: dict[tuple, tuple[Path, dict]] = {}

    def train(self, method: str, *extra: str) -> tuple[Path, dict]:
        """(run dir, record) of a tiny run on synthetic washer (thresholds F1-optimal unless `extra` says)."""
        key = (method, *extra)
        if key not in self.cache:
            size = [f"method.input.image_size={IMAGE_SIZE[method]}"] if method in IMAGE_SIZE else []
            cfg = _compose("train", [*tiny_overrides(method), *size, "data=synthetic/washer", "threshold=f1_test",
                                     f"paths.data_dir={self.data}", f"paths.results_dir={self.root / 'results'}",
                                     *extra])
            run_dir = self.root / f"run{len(self.cache)}"
            record = run.execute(cfg, run_dir, "train")
            assert record["status"] == "ok"
            self.cache[key] = run_dir, record
        return self.cache[key]

    def predict(self, run_dir: Path, input_: str | Path, output: Path, *extra: str) -> predict_task.PredictReport:
        cfg = predict_task.predict_config([f"checkpoint={run_dir / 'checkpoints' / 'last.ckpt'}", f"input={input_}",
                                           f"output={output}", f"data_root={self.data / 'synthetic'}",
                                           "progress=false", *extra])
        return predict_task.predict(cfg)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One torch thread for the module: tiny tensors on 2 shared cores are many times faster on one."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> Runs:
    return Runs(tmp_path_factory.mktemp("predict"))


def _eval_stage(runs: Runs, run_dir: Path) -> run.TestOutcome:
    """What `anobench eval` computes for the run's checkpoint (the run's config, its weights, the test stage)."""
    checkpoint = run_dir / "checkpoints" / "last.ckpt"
    cfg = load_run_config(checkpoint)
    cfg.data.root = str(runs.data / "synthetic")
    built = run.build(cfg)
    run.load_weights(built.module, checkpoint)
    return run.evaluate_on_test_set(built.module, built.datamodule, run.EvaluationSettings.from_config(cfg),
                                    run.testing_trainer(cfg, run_dir))


def _rows(output: Path) -> list[dict[str, str]]:
    with open(output / "scores.csv", newline="") as handle:
        return list(csv.DictReader(handle))


@pytest.mark.parametrize("method", list_methods())
def test_predict_on_the_runs_own_test_images_gives_evals_scores_and_maps(runs, method, tmp_path):
    run_dir, record = runs.train(method)
    outcome = _eval_stage(runs, run_dir)
    washer = runs.data / "synthetic" / "washer"
    report = runs.predict(run_dir, washer / "test" / "*" / "*.png", tmp_path / "out")
    samples = sorted((washer / "test").glob("*/*.png"))
    assert [Path(r["path"]) for r in report.rows] == samples and not report.skipped
    np.testing.assert_allclose([float(r["score"]) for r in report.rows], outcome.predictions.scores,
                               rtol=1e-6, atol=1e-6)
    for row, anomaly_map, sample in zip(report.rows, outcome.predictions.maps, samples):
        written = tifffile.imread(tmp_path / "out" / row["map"])
        width, height = Image.open(sample).size
        assert written.dtype == np.float32 and written.shape == (height, width)
        np.testing.assert_allclose(written, upsample_map(anomaly_map, (height, width)), rtol=1e-6, atol=1e-6)
    # the run's thresholds decide; f1_test is marked optimistic in result.json and in every row
    image_t = record["thresholds"]["image"]
    assert image_t["mode"] == "f1_test" and image_t["optimistic"] and record["thresholds"]["pixel"]["optimistic"]
    for row in report.rows:
        assert row["optimistic"] == "true" and row["threshold_mode"] == "f1_test"
        if image_t["value"] is not None:
            assert row["decision"] == ("anomalous" if float(row["score"]) >= image_t["value"] else "normal")
    assert (tmp_path / "out" / "overlays" / "good" / "000.png").is_file()
    if method == "mnad":  # the test-set min-max normalisation travels in result.json
        assert set(record["evaluation"]["score_reference"]) == {"psnr_min", "psnr_max", "distance_min",
                                                                "distance_max"}


def _inputs(folder: Path, washer: Path) -> list[Path]:
    """5 JPEG copies of test images at 900x900, a corrupt file, and greyscale / RGBA / BMP / TIFF / odd-size inputs."""
    folder.mkdir()
    tests = sorted((washer / "test").glob("*/*.png"))[:5]
    jpegs = []
    for i, path in enumerate(tests):
        jpegs.append(folder / f"copy{i}.jpg")
        Image.open(path).convert("RGB").resize((900, 900), Image.BILINEAR).save(jpegs[-1], quality=90)
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n this is not a png")
    return jpegs


def test_a_folder_of_jpegs_and_a_corrupt_file(runs, tmp_path, capsys):
    run_dir, _ = runs.train("memae")
    washer = runs.data / "synthetic" / "washer"
    _inputs(tmp_path / "in", washer)
    code = predict_task.predict_command([
        f"checkpoint={run_dir / 'checkpoints' / 'last.ckpt'}", f"input={tmp_path / 'in'}", f"output={tmp_path / 'out'}",
        f"data_root={runs.data / 'synthetic'}", "progress=false"])
    assert code == 1
    err = capsys.readouterr().err
    assert "broken.png" in err and "1 file(s) skipped" in err
    rows = _rows(tmp_path / "out")
    assert len(rows) == 5 and all(Path(r["path"]).suffix == ".jpg" for r in rows)
    maps = sorted((tmp_path / "out" / "maps").glob("*.tiff"))
    assert len(maps) == 5 and all(tifffile.imread(m).shape == (900, 900) for m in maps)
    assert all(tifffile.imread(m).dtype == np.float32 for m in maps)
    overlays = sorted((tmp_path / "out" / "overlays").glob("*.png"))
    assert len(overlays) == 5 and Image.open(overlays[0]).size == (900, 900)
    summary = json.loads((tmp_path / "out" / "predict.json").read_text())
    assert summary["skipped"][0]["path"].endswith("broken.png") and summary["n_scored"] == 5


def test_greyscale_rgba_bmp_tiff_and_any_size_are_converted_as_in_training(runs, tmp_path):
    run_dir, _ = runs.train("memae")
    source = sorted((runs.data / "synthetic" / "washer" / "test" / "good").glob("*.png"))[0]
    folder = tmp_path / "in"
    (folder / "sub").mkdir(parents=True)
    image = Image.open(source).convert("RGB")
    image.save(folder / "same.png")
    image.convert("RGBA").save(folder / "rgba.png")  # alpha dropped: the same pixels as same.png
    image.save(folder / "same.bmp")
    image.save(folder / "sub" / "same.tiff")
    image.convert("L").save(folder / "grey.png")
    image.resize((301, 157)).save(folder / "wide.jpg")
    (folder / "notes.txt").write_text("ignored: not an image suffix")
    report = runs.predict(run_dir, folder, tmp_path / "out")
    rows = {Path(r["path"]).relative_to(folder).as_posix(): r for r in report.rows}
    assert set(rows) == {"same.png", "rgba.png", "same.bmp", "sub/same.tiff", "grey.png", "wide.jpg"}
    # stems shared by two files keep their suffix in the output name; sub-folders are kept
    assert rows["same.png"]["map"] == "maps/same_png.tiff" and rows["same.bmp"]["map"] == "maps/same_bmp.tiff"
    assert rows["sub/same.tiff"]["map"] == "maps/sub/same.tiff"
    for name in ("rgba.png", "same.bmp", "sub/same.tiff"):
        assert rows[name]["score"] == rows["same.png"]["score"], name
    assert tifffile.imread(tmp_path / "out" / rows["wide.jpg"]["map"]).shape == (157, 301)
    grey = tifffile.imread(tmp_path / "out" / rows["grey.png"]["map"])
    assert grey.shape == image.size[::-1] and np.isfinite(grey).all()


def test_nothing_is_half_written(runs, tmp_path, monkeypatch):
    run_dir, _ = runs.train("memae")
    washer = runs.data / "synthetic" / "washer"
    calls = []

    def failing(*args, **kwargs):
        calls.append(args)
        if len(calls) == 3:
            raise OSError("disk full")
        return original(*args, **kwargs)

    original = tifffile.imwrite
    monkeypatch.setattr(tifffile, "imwrite", failing)
    with pytest.raises(OSError, match="disk full"):
        runs.predict(run_dir, washer / "test", tmp_path / "out")
    assert not (tmp_path / "out").exists() and list(tmp_path.iterdir()) == []
    monkeypatch.undo()
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "old.csv").write_text("x")
    with pytest.raises(ConfigError, match="not empty"):
        runs.predict(run_dir, washer / "test", tmp_path / "out")


def test_input_errors_are_one_clear_message(runs, tmp_path):
    run_dir, _ = runs.train("memae")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="no image files found"):
        runs.predict(run_dir, tmp_path / "empty", tmp_path / "out")
    (tmp_path / "a.gif").write_bytes(b"GIF89a")
    with pytest.raises(ConfigError, match="not a supported image type"):
        runs.predict(run_dir, tmp_path / "a.gif", tmp_path / "out")
    with pytest.raises(ConfigError, match="no such file or folder"):
        runs.predict(run_dir, tmp_path / "missing", tmp_path / "out")
    with pytest.raises(ConfigError, match="needs input="):
        predict_task.predict_config([f"checkpoint={run_dir / 'checkpoints' / 'last.ckpt'}"])
    # the training images rebuild the inference state: unreachable, the error says so
    cfg = predict_task.predict_config([
        f"checkpoint={run_dir / 'checkpoints' / 'last.ckpt'}", f"input={runs.data / 'synthetic' / 'washer' / 'test'}",
        f"output={tmp_path / 'out2'}", f"data_root={tmp_path / 'nowhere'}", "+overrides.data.dataset=mvtec",
        "+overrides.data.category=bottle"])  # washer is no MVTec AD category: that would be a ConfigError first
    with pytest.raises(DataError, match="training images"):
        predict_task.predict(cfg, progress=False)
    assert not (tmp_path / "out2").exists()


def test_a_threshold_on_the_command_line_overrides_the_runs(runs, tmp_path):
    run_dir, _ = runs.train("memae")
    good = runs.data / "synthetic" / "washer" / "test" / "good"
    report = runs.predict(run_dir, good, tmp_path / "out", "threshold=0")
    assert {r["decision"] for r in report.rows} == {"anomalous"} and {r["optimistic"] for r in report.rows} == {"false"}
    assert all(r["threshold_mode"] == "command line" and float(r["defect_fraction"]) == 1.0 for r in report.rows)
    with pytest.raises(ConfigError, match="takes a number"):
        runs.predict(run_dir, good, tmp_path / "out2", "threshold=f1_test")


def test_an_evals_thresholds_via_result(runs, tmp_path):
    run_dir, _ = runs.train("memae")
    checkpoint = run_dir / "checkpoints" / "last.ckpt"
    eval_cfg = _compose("eval", [f"checkpoint={checkpoint}", "threshold={image:1000000.0}",
                                 f"paths.results_dir={tmp_path / 'results'}"])
    run_cfg = eval_config(eval_cfg, checkpoint)
    run_cfg.data.root = str(runs.data / "synthetic")
    record = run.execute(run_cfg, tmp_path / "eval", "eval", checkpoint=checkpoint)
    assert record["thresholds"] == {"image": {"value": 1000000.0, "mode": "fixed", "optimistic": False}}
    report = runs.predict(run_dir, runs.data / "synthetic" / "washer" / "test" / "good", tmp_path / "out",
                          f"result={tmp_path / 'eval' / 'result.json'}")
    assert {r["decision"] for r in report.rows} == {"normal"} and {r["pixel_threshold"] for r in report.rows} == {""}
    assert any("no pixel threshold" in note for note in report.summary["notes"])


def test_a_fixed_threshold_is_recorded(runs):
    _, record = runs.train("memae", "threshold={image:0.5,pixel:0.25}")
    assert record["thresholds"] == {"image": {"value": 0.5, "mode": "fixed", "optimistic": False},
                                    "pixel": {"value": 0.25, "mode": "fixed", "optimistic": False}}


def test_normal_quantile_needs_held_out_images(tmp_path):
    cfg = _compose("train", [*tiny_overrides("memae"), "threshold=normal_quantile", f"paths.data_dir={tmp_path}"])
    with pytest.raises(ConfigError, match=r"data\.holdout_normal=0\.1"):
        run.start_record(cfg, "train")  # before any training
    with pytest.raises(ConfigError, match="threshold_quantile"):
        ThresholdSetting.from_config(_compose("train", ["threshold=normal_quantile", "threshold_quantile=1.5",
                                                        "data.holdout_normal=2"]))
    with pytest.raises(ConfigError, match="threshold='median'"):
        ThresholdSetting.from_config(_compose("train", ["threshold=median"]))


def test_normal_quantile_is_the_quantile_of_the_held_out_images_as_predict_scores_them(runs, tmp_path):
    run_dir, record = runs.train("memae", "data.holdout_normal=2", "threshold=normal_quantile",
                                 "threshold_quantile=0.5")
    assert record["n_holdout_images"] == 2 and record["n_train_images"] == 4
    held = AnomalyDataModule(dataset="synthetic", category="washer", root=str(runs.data / "synthetic"),
                             holdout_normal=2, synthetic={"n_train": 6, "n_test_good": 3, "n_test_per_defect": 1})
    held.setup()
    folder = tmp_path / "held"
    folder.mkdir()
    for sample in held.holdout_samples:
        os.symlink(sample.image_path, folder / sample.image_path.name)
    report = runs.predict(run_dir, folder, tmp_path / "out")
    thresholds = record["thresholds"]
    assert thresholds["image"]["mode"] == "normal_quantile" and not thresholds["image"]["optimistic"]
    assert thresholds["image"]["q"] == 0.5 and thresholds["image"]["n_images"] == 2
    assert thresholds["image"]["value"] == pytest.approx(np.quantile([float(r["score"]) for r in report.rows], 0.5),
                                                         rel=1e-6, abs=1e-6)
    pixels = np.concatenate([tifffile.imread(tmp_path / "out" / r["map"]).ravel() for r in report.rows])
    assert thresholds["pixel"]["value"] == pytest.approx(float(np.quantile(pixels, 0.5)), rel=1e-6, abs=1e-6)
    # the held-out images are neither trained on nor in the inference state (both training loaders skip them)
    assert {s.image_path for s in held.holdout_samples}.isdisjoint(s.image_path for s in held.index.train)


def test_nbs_scores_only_the_images_it_tracked(runs, tmp_path):
    run_dir, _ = runs.train("nbs")
    test_image = Image.open(sorted((runs.data / "synthetic" / "washer" / "test" / "good").glob("*.png"))[0])
    (tmp_path / "in").mkdir()
    test_image.save(tmp_path / "in" / "tracked.png")
    test_image.convert("RGB").resize((900, 900)).save(tmp_path / "in" / "copy.jpg", quality=90)
    report = runs.predict(run_dir, tmp_path / "in", tmp_path / "out")
    assert [Path(r["path"]).name for r in report.rows] == ["tracked.png"]
    assert len(report.skipped) == 1 and "transductive" in report.skipped[0].reason


# --- held-out normal images in the datamodule ----------------------------------------------------------
def _datamodule(tmp_path, holdout) -> AnomalyDataModule:
    return AnomalyDataModule(dataset="synthetic", category="washer", root=str(tmp_path), holdout_normal=holdout,
                             eval_batch_size=2, synthetic={"n_train": 6, "n_test_good": 2, "n_test_per_defect": 1})


@pytest.mark.parametrize("holdout, n_held", [(0, 0), (2, 2), (0.5, 3), (0.01, 1)])
def test_held_out_images_leave_every_training_loader(tmp_path, holdout, n_held):
    dm = _datamodule(tmp_path, holdout)
    dm.setup()
    assert len(dm.holdout_samples) == n_held and len(dm.index.train) == 6 - n_held
    assert len(dm.training_images()) == 6 - n_held
    assert sum(len(b["image"]) for b in dm.train_dataloader()) == 6 - n_held
    assert sum(len(b["image"]) for b in dm.holdout_dataloader()) == n_held
    again = _datamodule(tmp_path, holdout)
    again.setup()
    assert again.holdout_samples == dm.holdout_samples  # seeded: the same images every time


@pytest.mark.parametrize("holdout", [-1, 1.5, "a", True])
def test_a_bad_holdout_names_the_key(tmp_path, holdout):
    with pytest.raises(ConfigError, match="data.holdout_normal"):
        _datamodule(tmp_path, holdout)


def test_a_holdout_must_leave_training_images(tmp_path):
    with pytest.raises(ConfigError, match="at least one must remain"):
        _datamodule(tmp_path, 6).setup()


# --- the config hash --------------------------------------------------------------------------------------
def test_committed_results_keep_their_config_hash():
    checked = 0
    for path in sorted((REPO / "results").rglob("result.json")):
        record = json.loads(path.read_text())
        if record.get("config_hash"):
            assert record["config_hash"] == config_hash(record["config"]), path
            checked += 1
    assert checked > 0


def test_new_keys_change_the_hash_only_away_from_their_neutral_value():
    cfg = {"seed": 0, "data": {"category": "washer"}}
    base = config_hash(cfg)
    assert config_hash({**cfg, "threshold": "f1_test", "threshold_quantile": 0.9}) == base
    assert config_hash({**cfg, "data": {"category": "washer", "holdout_normal": 0}}) == base
    assert config_hash({**cfg, "data": {"category": "washer", "holdout_normal": 0.0}}) == base
    assert config_hash({**cfg, "data": {"category": "washer", "holdout_normal": 2}}) != base


# --- the report's panels -----------------------------------------------------------------------------------
def test_panels_show_the_predicted_region_beside_the_ground_truth(tmp_path):
    from anobench.visualize.figures import ColourScale, write_panel

    image = np.zeros((32, 32, 3), dtype=np.uint8)
    mask = np.zeros((32, 32), dtype=bool)
    mask[8:16, 8:16] = True
    anomaly_map = mask.astype(np.float32)
    plain = write_panel(tmp_path / "plain.png", image, mask, anomaly_map, ColourScale(0, 1), "t")
    with_mask = write_panel(tmp_path / "pred.png", image, mask, anomaly_map, ColourScale(0, 1), "t",
                            pixel_threshold=0.5, threshold_label="f1_test, optimistic")
    assert Image.open(with_mask).size[0] > Image.open(plain).size[0]  # one more column
