"""Every conf/experiment/<method>_paper.yaml starts: it composes and runs 2 training steps on CPU, so a paper
config that cannot start is found here, not on a cluster. (The test stage at paper settings is what the
released-weights test runs for Patch SVDD; here it would add minutes — Uninformed Students' three p = 65
students on 256² images take ~30 s a step on 2 cores — and find nothing the method tests do not.)

Only the budget and the data shrink (`TINY`: trainer=smoke = 2 steps, a tiny synthetic category); the model
sizes, image size, batch sizes and every other paper setting stay as the experiment file sets them. Two
settings need what a test machine lacks and are replaced (scripts/gpu_check.py's `offline_overrides`, which the
GPU check uses too): ImageNet-pretrained backbone weights (not downloadable offline: random weights of the same architecture) and Uninformed Students'
ImageNet distillation folder (the synthetic category's own training images instead, still through the
paper's `distill_data=imagefolder` path, with 2 teacher steps).
"""

from __future__ import annotations

import sys

import pytest
from hydra import compose, initialize_config_dir

from anobench.config import config_dir, group_options
from anobench.tasks import run
from conftest import REPO
from fitting import TINY_SYNTHETIC, FitRecord, synthetic_overrides

sys.path.insert(0, str(REPO / "scripts"))
from gpu_check import offline_overrides  # noqa: E402

EXPERIMENTS = [name for name in group_options("experiment") if name.endswith("_paper")]
CATEGORY = "washer"
# the budget and the data, nothing else: 2 steps, the tiniest synthetic category (batch sizes stay the paper's)
# (no epoch limit: a paper batch can exceed the tiny training set, one batch an epoch)
STEPS_AND_DATA = ["trainer=smoke", "trainer.max_epochs=null", f"data=synthetic/{CATEGORY}", *synthetic_overrides(TINY_SYNTHETIC)]


def _compose(name: str, tmp_path) -> object:
    data = tmp_path / "data"
    extra = offline_overrides(name, data)
    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        return compose(config_name="train", overrides=[
            f"experiment={name}", *STEPS_AND_DATA, f"paths.data_dir={data}",
            f"paths.results_dir={tmp_path / 'results'}", *extra])


def test_every_method_has_a_paper_experiment():
    from anobench.methods import list_methods

    assert sorted(f"{m}_paper" for m in list_methods()) == sorted(EXPERIMENTS)


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_paper_experiment_starts_and_runs_two_steps(name, tmp_path):
    cfg = _compose(name, tmp_path)
    assert cfg.experiment_name == name and cfg.trainer.max_steps == 2
    assert cfg.budget_label in ("paper", "full")  # nbs_paper: "full" (its paper reports no MVTec AD number)
    built = run.build(cfg)
    record = FitRecord()
    trainer = run.build_trainer(cfg.trainer, tmp_path / "run", logger=False, enable_progress_bar=False,
                                enable_model_summary=False, callbacks=[record])
    trainer.fit(built.module, datamodule=built.datamodule)
    assert trainer.global_step == 2, (name, trainer.global_step)
    assert record.changed(built.module), f"{name}: 2 optimiser steps changed no parameter"
