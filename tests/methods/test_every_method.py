"""Contract tests run for every registered method (timm style): a new method gets them for free.

Each method: composes from its YAML, fits a couple of steps and tests through the shared evaluator,
returns a well-formed `AnomalyOutput`, is deterministic for a fixed seed on CPU, and a reloaded
checkpoint reproduces the same maps (everything inference needs is saved in the checkpoint).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir

from anobench.config import config_dir
from anobench.methods import AnomalyOutput, get_method, list_methods
from anobench.tasks.train import build_run, build_trainer

TINY = [
    "trainer=smoke",
    "data=synthetic/washer",
    "method.input.batch_size=4",
    "method.input.eval_batch_size=4",
    "data.synthetic.n_train=6",
    "data.synthetic.n_test_good=3",
    "data.synthetic.n_test_per_defect=1",
]


# Uninformed Students distils its default (efficientnet_lite0) teacher: 2 steps keep the contract test fast
PER_METHOD = {"uninformed_students": ["method.module.teacher.steps=2", "method.module.teacher.batch_size=4"]}


def _compose(method: str, tmp_path, extra: list[str] = ()):
    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        return compose(config_name="train", overrides=[
            f"method={method}", *TINY, *PER_METHOD.get(method, []), f"paths.data_dir={tmp_path / 'data'}",
            f"paths.results_dir={tmp_path / 'results'}", *extra])


def _fit_and_test(cfg, run_dir):
    datamodule, module = build_run(cfg)
    trainer = build_trainer(cfg.trainer, run_dir, enable_progress_bar=False, logger=False)
    trainer.fit(module, datamodule=datamodule)
    trainer.test(module, datamodule=datamodule, verbose=False)
    return trainer, datamodule, module


def _maps(module, datamodule) -> list[np.ndarray]:
    module.eval()
    module.prepare_inference(datamodule.inference_train_dataloader())
    out = []
    for batch in datamodule.test_dataloader():
        result = module.model(batch["image"])
        out.append(result.anomaly_map.detach().numpy())
    return out


@pytest.mark.parametrize("name", list_methods())
def test_method_fits_tests_and_reloads(name, tmp_path):
    cfg = _compose(name, tmp_path)
    trainer, datamodule, module = _fit_and_test(cfg, tmp_path / "run")
    results = module.test_results
    assert set(results["metrics"]) >= {"image_auroc", "pixel_auroc", "pro", "image_auroc_map_max"}
    assert all(0.0 <= v <= 1.0 for v in results["metrics"].values()), results["metrics"]
    assert results["n_images"] == len(datamodule.test_samples) - len(results.get("excluded_test_indices", []))

    # output contract on one batch
    module.eval()
    batch = next(iter(datamodule.test_dataloader()))
    out = module.model(batch["image"])
    assert isinstance(out, AnomalyOutput)
    b = batch["image"].shape[0]
    assert out.anomaly_map.ndim == 3 and out.anomaly_map.shape[0] == b
    assert out.pred_score.shape == (b,)
    assert torch.isfinite(out.anomaly_map).all() and torch.isfinite(out.pred_score).all()

    # a reloaded checkpoint gives the same maps
    ckpt = tmp_path / "last.ckpt"
    trainer.save_checkpoint(ckpt)
    before = _maps(module, datamodule)
    reloaded = get_method(name).load_from_checkpoint(ckpt, map_location="cpu")
    after = _maps(reloaded, datamodule)
    for x, y in zip(before, after):
        np.testing.assert_allclose(x, y, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name", list_methods())
def test_method_is_deterministic_for_a_seed(name, tmp_path):
    metrics = []
    for attempt in range(2):
        cfg = _compose(name, tmp_path, ["seed=3"])
        _, _, module = _fit_and_test(cfg, tmp_path / f"run{attempt}")
        metrics.append(module.test_results["metrics"])
    for key in ("image_auroc", "pixel_auroc", "pro"):
        a, b = metrics[0][key], metrics[1][key]
        assert (math.isnan(a) and math.isnan(b)) or a == b, (key, a, b)
