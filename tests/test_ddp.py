"""`trainer=ddp`: Lightning's DDP strategy. Two CPU processes (gloo) train what one process trains, where the
method's training is data-parallel; only rank 0 tests and records; suites refuse launchers DDP cannot run under."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from anobench.errors import AnobenchError
from anobench.tasks import bench
from anobench.tasks import plan as planning
from anobench.tasks.ddp import RANK_ENV, is_primary_process
from tests.conftest import REPO
from tests.methods.fitting import synthetic_overrides
from tests.test_config import _compose as compose_train
from tests.test_suite import TINY_OVERRIDES, TINY_SUITE

# GradCon's plain reconstruction part (gradient loss off), trained with SGD: every update is the mean gradient
# over the global batch, so 2 processes × batch 2 must equal 1 process × batch 4 up to float rounding.
# (Adam is left out on purpose: its first steps are lr·sign(g), which turns rounding noise in near-zero
# gradients into lr-sized differences; the comparison would test float noise, not DDP.)
# Not TINY (tests/methods/fitting.py) on purpose: the trainer is each test's (cpu or ddp), and 8 training images
# split evenly into whole batches of 4 (one process) and of 2 per process (two processes).
TINY_GRADCON = ["method=gradcon", "data=synthetic/washer",
                *synthetic_overrides(dict(n_train=8, n_test_good=4, n_test_per_defect=2)),
                "method.input.image_size=64", "method.input.eval_batch_size=8",
                "trainer.max_steps=4", "trainer.deterministic=true", "visualize.enabled=false",
                "method.module.grad_loss_weight=0", "method.module.optimizer._target_=torch.optim.SGD",
                "method.module.optimizer.lr=0.5"]


def test_ddp_trainer_config():
    cfg = compose_train(["trainer=ddp"])
    assert cfg.trainer.strategy.startswith("ddp") and cfg.trainer.accelerator == "gpu"
    assert cfg.trainer.sync_batchnorm is True and cfg.trainer.num_nodes == 1


@pytest.mark.parametrize("name", RANK_ENV)
def test_a_nonzero_rank_from_any_launcher_is_not_the_primary_process(name, monkeypatch):
    for other in RANK_ENV:
        monkeypatch.delenv(other, raising=False)
    assert is_primary_process()
    monkeypatch.setenv(name, "0")
    assert is_primary_process()
    monkeypatch.setenv(name, "1")
    assert not is_primary_process()


def _train(tmp_path: Path, run: str, *overrides: str) -> dict:
    env = {**os.environ, "ANOBENCH_RESULTS_DIR": str(tmp_path / "results"), "ANOBENCH_DATA_DIR": str(tmp_path / "data"),
           "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    for name in RANK_ENV:
        env.pop(name, None)
    run_dir = tmp_path / "results" / "runs" / run
    done = subprocess.run([sys.executable, "-m", "anobench", "train", *TINY_GRADCON, *overrides,
                           f"hydra.run.dir={run_dir}"], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads((run_dir / "result.json").read_text())


@pytest.mark.slow
def test_two_gloo_processes_train_what_one_process_trains(tmp_path):
    single = _train(tmp_path, "single", "trainer=cpu", "method.input.batch_size=4")
    ddp = _train(tmp_path, "ddp", "trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2",
                 "trainer.sync_batchnorm=false", "method.input.batch_size=2")
    assert single["budget"]["world_size"] == 1 and ddp["budget"]["world_size"] == 2
    assert ddp["status"] == "ok" and ddp["budget"]["global_step"] == single["budget"]["global_step"] == 4

    def weights(run: str) -> dict[str, torch.Tensor]:
        path = tmp_path / "results" / "runs" / run / "checkpoints" / "last.ckpt"
        return torch.load(path, map_location="cpu", weights_only=False)["state_dict"]

    one, two = weights("single"), weights("ddp")
    assert one.keys() == two.keys()
    for key in one:
        torch.testing.assert_close(two[key], one[key], rtol=1e-4, atol=1e-4, msg=f"{key} differs under DDP")
    for metric, value in single["metrics"].items():
        assert ddp["metrics"][metric] == pytest.approx(value, abs=1e-4), metric

    # Rank 1 trained but recorded nothing of its own: one result and one checkpoint per run.
    results = list((tmp_path / "results" / "runs").glob("**/result.json"))
    assert sorted(p.parent.name for p in results) == ["ddp", "single"]
    assert len(list((tmp_path / "results" / "runs").glob("**/*.ckpt"))) == 2


def test_suite_refuses_ddp_under_a_launcher_that_cannot_start_its_processes(tmp_path, monkeypatch):
    monkeypatch.setenv("ANOBENCH_DATA_DIR", str(tmp_path / "data"))
    suite = planning.load_suite("method", TINY_SUITE[1:3] + ["seeds=[0,1]", "categories=[synthetic/weave]", TINY_OVERRIDES])
    with pytest.raises(AnobenchError, match="trainer=ddp.*default launcher.*submitit_slurm"):
        bench.run_suite(suite, tmp_path / "results", extra_overrides=["trainer=ddp"], n_jobs=2)
    assert not list((tmp_path / "results").glob("**/result.json"))


@pytest.mark.slow
def test_a_suite_runs_ddp_jobs_one_after_another_in_their_planned_folders(tmp_path):
    """Each job's second rank is started by Lightning as that job's own train command, in the job's folder,
    and the first job's process group does not leak into the second."""
    env = {**os.environ, "ANOBENCH_DATA_DIR": str(tmp_path / "data"), "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    for name in RANK_ENV:
        env.pop(name, None)
    done = subprocess.run([sys.executable, "-m", "anobench", "bench", *TINY_SUITE[:4], "categories=[synthetic/weave]",
                           TINY_OVERRIDES, f"results_dir={tmp_path / 'results'}", "trainer=ddp",
                           "trainer.accelerator=cpu", "trainer.devices=2", "trainer.sync_batchnorm=false"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    results = sorted((tmp_path / "results" / "suites" / "method_patch_svdd" / "runs").glob("**/result.json"))
    assert len(results) == 2
    for path in results:
        record = json.loads(path.read_text())
        assert record["status"] == "ok" and record["budget"]["world_size"] == 2
        assert (path.parent / "train_ddp_process_1.log").is_file()  # rank 1 ran in this job's folder
