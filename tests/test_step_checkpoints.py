"""checkpoint_steps: the step<N>.ckpt of a longer run is the model a max_steps=N run ends with (in process)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from anobench.config import config_dir
from anobench.errors import ConfigError
from anobench.tasks import evaluate as evaluate_task
from anobench.tasks import run
from tests.conftest import SMALL_RUN


def _compose(name: str, overrides: list[str]):
    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        return compose(config_name=name, overrides=overrides)


def test_step_checkpoint_is_the_smaller_budgets_model_and_eval_records_its_step(tmp_path, monkeypatch):
    def fit(max_steps: int, steps: list[int]) -> dict[str, torch.Tensor]:
        cfg = _compose("train", ["trainer=smoke", "method=memae", "data=synthetic/weave", "trainer.max_epochs=-1",
                                 f"trainer.max_steps={max_steps}", f"paths.data_dir={tmp_path / 'data'}",
                                 f"paths.results_dir={tmp_path / 'results'}", f"checkpoint_steps={steps}", *SMALL_RUN])
        run_dir = tmp_path / f"run{max_steps}"
        built = run.build(cfg)
        trainer = run.build_trainer(cfg.trainer, run_dir, logger=False, callbacks=run.fit_callbacks(cfg, run_dir))
        trainer.fit(built.module, datamodule=built.datamodule)
        run_dir.mkdir(exist_ok=True)
        OmegaConf.save(cfg, run_dir / "config.yaml", resolve=True)  # what anobench eval rebuilds the run from
        return built.module.state_dict()

    final = fit(3, [1])
    short = fit(1, [])
    early = torch.load(tmp_path / "run3" / "checkpoints" / "step1.ckpt", map_location="cpu",
                       weights_only=False)["state_dict"]
    assert early.keys() == short.keys()
    assert all(torch.equal(early[k], short[k]) for k in early)
    assert not all(torch.equal(early[k], final[k]) for k in early)  # step 1 is not the last model again

    eval_dir = tmp_path / "eval"
    monkeypatch.setattr(evaluate_task, "hydra_run_dir", lambda: eval_dir)  # no Hydra app in process
    evaluate_task.evaluate(_compose("eval", [f"checkpoint={tmp_path / 'run3' / 'checkpoints' / 'step1.ckpt'}",
                                             "visualize.enabled=false", f"paths.results_dir={tmp_path / 'results'}"]))
    record = json.loads((eval_dir / "result.json").read_text())
    assert record["status"] == "ok" and record["budget"]["global_step"] == 1


def test_step_checkpoints_refuse_non_positive_steps(tmp_path):
    with pytest.raises(ConfigError, match="checkpoint_steps: expected positive step counts"):
        run.StepCheckpoints(Path(tmp_path), [0, 5])
