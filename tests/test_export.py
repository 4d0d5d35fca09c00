"""`export.maps=true`: the test maps in MVTec's evaluation layout reproduce result.json's metrics when read back."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hydra import compose, initialize_config_dir

from anobench.config import config_dir
from anobench.data import AnomalyDataModule
from anobench.metrics import evaluate_category
from anobench.results.export import export_maps, map_path, read_maps
from anobench.tasks import run
from anobench.tasks.evaluate import eval_config
from tests.methods.fitting import tiny_overrides


def _compose(name: str, overrides: list[str]):
    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        return compose(config_name=name, overrides=overrides)


def _recomputed(record: dict, category_dir, datamodule: AnomalyDataModule) -> dict:
    samples = datamodule.test_samples
    maps = read_maps(category_dir, samples)
    for sample, exported in zip(samples, maps):
        assert exported.dtype == np.float32
        assert exported.shape == datamodule.load_mask(samples.index(sample)).shape  # ground-truth resolution
    labels = np.array([s.label for s in samples])
    return evaluate_category(maps, [float(m.max()) for m in maps], [datamodule.load_mask(i) for i in range(len(samples))],
                             labels, fpr_limit=record["evaluation"]["fpr_limit"]).metrics


def test_train_and_eval_export_maps_that_reproduce_the_metrics(tmp_path):
    cfg = _compose("train", [*tiny_overrides("memae"), "data=synthetic/washer", "data.synthetic.n_train=6",
                             "data.synthetic.n_test_good=3", "data.synthetic.n_test_per_defect=1",
                             "method.input.image_size=64", f"paths.data_dir={tmp_path / 'data'}",
                             f"paths.results_dir={tmp_path / 'results'}", "export.maps=true"])
    run_dir = tmp_path / "train"
    record = run.execute(cfg, run_dir, "train")
    assert record["status"] == "ok" and record["export"]["maps"] == "anomaly_maps/washer"
    datamodule = run.build(cfg).datamodule
    metrics = _recomputed(record, run_dir / record["export"]["maps"], datamodule)
    for key in ("pixel_auroc", "pro", "image_auroc_map_max"):
        assert metrics[key] == pytest.approx(record["metrics"][key], abs=1e-9), key
    assert record["export"]["n_maps"] == len(datamodule.test_samples)
    # the export key is not part of what a run computes: bench's resume hash ignores it
    plain = _compose("train", [k for k in cfg_overrides(cfg) if not k.startswith("export")])
    assert record["config_hash"] == run.start_record(plain, "train")["config_hash"]

    # eval of the same checkpoint, exporting into a folder of the user's choice
    eval_cfg = _compose("eval", [f"checkpoint={run_dir / 'checkpoints' / 'last.ckpt'}", "export.maps=true",
                                 f"export.dir={tmp_path / 'official'}", f"paths.results_dir={tmp_path / 'results'}"])
    run_cfg = eval_config(eval_cfg, run_dir / "checkpoints" / "last.ckpt")
    evaluated = run.execute(run_cfg, tmp_path / "eval", "eval", checkpoint=run_dir / "checkpoints" / "last.ckpt")
    assert evaluated["status"] == "ok"
    again = _recomputed(evaluated, tmp_path / "official" / "washer", datamodule)
    for key in ("pixel_auroc", "pro"):
        assert again[key] == pytest.approx(evaluated["metrics"][key], abs=1e-9), key
    assert json.loads((tmp_path / "eval" / "result.json").read_text())["export"]["n_maps"] == record["export"]["n_maps"]


def cfg_overrides(cfg) -> list[str]:
    """The overrides that composed `cfg` in this test (kept in one place for the hash comparison)."""
    return [*tiny_overrides("memae"), "data=synthetic/washer", "data.synthetic.n_train=6",
            "data.synthetic.n_test_good=3", "data.synthetic.n_test_per_defect=1", "method.input.image_size=64",
            f"paths.data_dir={cfg.paths.data_dir}", f"paths.results_dir={cfg.paths.results_dir}", "export.maps=true"]


def test_an_export_replaces_the_category_folder_whole(tmp_path):
    from anobench.data.mvtec import Sample

    images = tmp_path / "img"
    images.mkdir()
    from PIL import Image

    samples = []
    for i, defect in enumerate(["good", "crack"]):
        path = images / f"{i:03d}.png"
        Image.new("RGB", (12, 10)).save(path)
        samples.append(Sample(path, None, int(defect != "good"), defect))
    maps = [np.full((4, 4), float(i), dtype=np.float32) for i in range(2)]
    export_maps(tmp_path / "out", "cat", samples, maps)
    stale = tmp_path / "out" / "cat" / "test" / "scratch" / "old.tiff"
    stale.parent.mkdir(parents=True)
    stale.write_bytes(b"old")
    folder = export_maps(tmp_path / "out", "cat", samples, maps)
    assert not stale.exists() and map_path(tmp_path / "out", "cat", samples[1]).is_file()
    read = read_maps(folder, samples)
    assert [m.shape for m in read] == [(10, 12), (10, 12)] and read[1].max() == 1.0
    assert not [p for p in (tmp_path / "out").iterdir() if p.name.startswith(".")]  # no staging left behind
    with pytest.raises(ValueError, match="2 test samples"):
        export_maps(tmp_path / "out", "cat", samples, maps[:1])
