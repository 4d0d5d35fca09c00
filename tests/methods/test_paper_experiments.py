"""Every conf/experiment/<method>_paper.yaml starts: it composes and runs 2 training steps and the test stage on
CPU, so a paper config that cannot start is found here, not on a cluster.

Only the budget and the data shrink (`TINY`: trainer=smoke = 2 steps, a tiny synthetic category); the model
sizes, image size, batch sizes and every other paper setting stay as the experiment file sets them. Two
settings need what a test machine lacks and are replaced, each named in `OFFLINE`: ImageNet-pretrained
backbone weights (not downloadable offline: random weights of the same architecture) and Uninformed Students'
ImageNet distillation folder (the synthetic category's own training images instead, still through the
paper's `distill_data=imagefolder` path, with 2 teacher steps).
"""

from __future__ import annotations

import time

import pytest
from hydra import compose, initialize_config_dir

from anobench.config import config_dir, group_options
from fitting import TINY_SYNTHETIC, fit_and_test_config, synthetic_overrides

EXPERIMENTS = group_options("experiment")
CATEGORY = "washer"
# the budget and the data, nothing else: 2 steps, the tiniest synthetic category (batch sizes stay the paper's)
STEPS_AND_DATA = ["trainer=smoke", f"data=synthetic/{CATEGORY}", *synthetic_overrides(TINY_SYNTHETIC)]
# what a CPU test machine without network or ImageNet lacks (see the module docstring)
OFFLINE = {
    "synthcp_paper": ["backbone.pretrained=false"],
    "uninformed_students_paper": ["backbone.pretrained=false", "method.module.teacher.steps=2",
                                  "method.module.teacher.image_folder={data}/synthetic/washer/train/good"],
}


def _compose(name: str, tmp_path) -> object:
    data = tmp_path / "data"
    extra = [o.format(data=data) for o in OFFLINE.get(name, [])]
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
    start = time.perf_counter()
    fitted = fit_and_test_config(cfg, tmp_path / "run")
    assert fitted.trainer.global_step == 2, (name, fitted.trainer.global_step)
    assert set(fitted.metrics) >= {"image_auroc", "pixel_auroc", "pro"}
    assert time.perf_counter() - start < 60, f"{name}: the 2-step run took {time.perf_counter() - start:.0f} s"
