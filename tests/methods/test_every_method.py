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
from fitting import fit_and_test_config, tiny_overrides


def _compose(method: str, tmp_path, extra: list[str] = ()):
    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        return compose(config_name="train", overrides=[
            *tiny_overrides(method), "data=synthetic/washer", f"paths.data_dir={tmp_path / 'data'}",
            f"paths.results_dir={tmp_path / 'results'}", *extra])


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
    fitted = fit_and_test_config(cfg, tmp_path / "run")
    trainer, datamodule, module, metrics = fitted.trainer, fitted.datamodule, fitted.module, fitted.metrics
    evaluation = fitted.outcome.evaluation_record()  # result.json's "evaluation" block
    assert set(metrics) >= {"image_auroc", "pixel_auroc", "pro", "image_auroc_map_max"}
    assert all(0.0 <= v <= 1.0 for v in metrics.values()), metrics
    assert evaluation["n_images"] == len(datamodule.test_samples) - len(evaluation.get("excluded_test_indices", []))

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
        metrics.append(fit_and_test_config(cfg, tmp_path / f"run{attempt}").metrics)
    for key in ("image_auroc", "pixel_auroc", "pro"):
        a, b = metrics[0][key], metrics[1][key]
        assert (math.isnan(a) and math.isnan(b)) or a == b, (key, a, b)
