"""DDP jobs inside the commands that run many (`anobench bench`, `anobench train -m`) and after them (`anobench eval`),
with two gloo processes on CPU: a rank > 0 failing leaves a failed record and the suite goes on, a `-m` sweep's
ranks re-run their own job, all ranks leave the process group before rank 0 tests, and eval tests in one process.

One suite run (module fixture) serves several tests: seed 0 fails on rank 1, seed 1 trains and tests.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

from anobench.methods.gradcon import GradCon
from anobench.results.leaderboard import build_leaderboard
from anobench.results.record import RUNNING, settle_result, write_result
from anobench.tasks.ddp import JOB_OUTPUT_FILE, RANK_ENV
from anobench.tasks.plan import is_complete
from tests.conftest import REPO
from tests.test_ddp import TINY_GRADCON

# The probe fails on rank 1 of the run whose seed this variable names (Lightning's seed_everything exports
# PL_GLOBAL_SEED in every rank), in its first training step, while rank 0 waits in the gradient all-reduce.
FAIL_ON_RANK1_SEED_ENV = "ANOBENCH_TEST_FAIL_ON_RANK1_SEED"
DDP_CPU = ["trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2", "trainer.sync_batchnorm=false"]
# TINY_GRADCON without its grid keys (a suite sets method= and data= per job), on the probe module
JOB_OVERRIDES = [o for o in TINY_GRADCON if not o.startswith(("method=", "data="))] + [
    "method.input.batch_size=2", "save_checkpoint=true", "method.module._target_=tests.test_ddp_jobs.ProbeGradCon"]


class ProbeGradCon(GradCon):
    """GradCon that fails on rank 1 when told to (FAIL_ON_RANK1_SEED_ENV) and records in its evaluation entries
    whether a process group was still live while rank 0 tested."""

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        if self.trainer.global_rank == 1 and os.environ.get(FAIL_ON_RANK1_SEED_ENV) == os.environ.get("PL_GLOBAL_SEED"):
            raise RuntimeError("probe: rank 1 fails")
        return super().training_step(batch, batch_idx)

    def on_test_start(self) -> None:
        self.group_live_in_test = torch.distributed.is_available() and torch.distributed.is_initialized()
        super().on_test_start()

    def extra_test_results(self, predictions: Any) -> dict[str, Any]:
        return {**super().extra_test_results(predictions), "probe_group_live_in_test": self.group_live_in_test}


def _env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {**os.environ, "ANOBENCH_RESULTS_DIR": str(tmp_path / "results"), "ANOBENCH_DATA_DIR": str(tmp_path / "data"),
           "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO), **extra}
    for name in (*RANK_ENV, "ANOBENCH_JOB_LOG"):
        env.pop(name, None)
    return env


def _anobench(tmp_path: Path, *args: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "anobench", *args], cwd=tmp_path, env=_env(tmp_path, **env),
                          capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def ddp_suite(tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess, dict[int, tuple[Path, dict]]]:
    """A DDP suite of two jobs, the first (seed 0) failing on rank 1: (tmp dir, the bench process, seed -> record)."""
    tmp_path = tmp_path_factory.mktemp("ddp_suite")
    done = _anobench(tmp_path, "bench", "suite=method", "method=gradcon", "experiment=null", "seeds=[0,1]",
                     "categories=[synthetic/washer]", f"overrides=[{','.join(JOB_OVERRIDES)}]",
                     f"results_dir={tmp_path / 'results'}", *DDP_CPU, **{FAIL_ON_RANK1_SEED_ENV: "0"})
    runs = tmp_path / "results" / "suites" / "method_gradcon" / "runs"
    records = {}
    for path in runs.glob("**/result.json"):
        record = json.loads(path.read_text())
        records[record["seed"]] = (path.parent, record)
    return tmp_path, done, records


@pytest.mark.slow
def test_a_rank_1_failure_fails_its_job_only_and_the_suite_goes_on(ddp_suite):
    _, done, records = ddp_suite
    output = done.stdout[-3000:] + done.stderr[-3000:]
    assert done.returncode == 1, output  # one job failed; the suite itself was not killed (-9)
    assert sorted(records) == [0, 1], output
    failed_dir, failed = records[0]
    assert failed["status"] == "failed" and failed["config_hash"] == failed_dir.name  # kept from its `running` record
    assert failed["error"]["job_output"] == JOB_OUTPUT_FILE and failed["error"]["job_exit_code"] != 0
    assert "probe: rank 1 fails" in (failed_dir / JOB_OUTPUT_FILE).read_text()  # every rank's output, kept
    assert records[1][1]["status"] == "ok" and records[1][1]["budget"]["world_size"] == 2
    assert "1 ran ok, 1 failed" in done.stdout


@pytest.mark.slow
def test_all_ranks_leave_the_process_group_before_rank_0_tests(ddp_suite):
    _, _, records = ddp_suite
    assert records[1][1]["evaluation"]["probe_group_live_in_test"] is False


@pytest.mark.slow
def test_eval_of_a_ddp_run_tests_in_one_process(ddp_suite):
    tmp_path, _, records = ddp_suite
    run_dir, trained = records[1]
    eval_dir = tmp_path / "eval"
    done = _anobench(tmp_path, "eval", f"checkpoint={run_dir / 'checkpoints' / 'last.ckpt'}", f"hydra.run.dir={eval_dir}")
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    record = json.loads((eval_dir / "result.json").read_text())
    assert record["status"] == "ok" and record["n_test_images"] == trained["n_test_images"]
    assert record["metrics"] == pytest.approx(trained["metrics"])
    assert not list(eval_dir.glob("*ddp_process*"))  # no rank was started


@pytest.mark.slow
def test_a_ddp_sweep_runs_each_job_with_its_own_ranks(tmp_path):
    """`-m` first on the command line: each job's ranks re-run that job's command, not the sweep's argv."""
    done = _anobench(tmp_path, "train", "-m", *TINY_GRADCON, "method.input.batch_size=2", "save_checkpoint=false",
                     *DDP_CPU, "seed=3")
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    (path,) = (tmp_path / "results" / "runs" / "multirun").glob("**/result.json")
    record = json.loads(path.read_text())
    assert record["status"] == "ok" and record["seed"] == 3 and record["budget"]["world_size"] == 2
    assert (path.parent / "train_ddp_process_1.log").is_file()  # rank 1 ran in this job's folder
    assert "1 of 1 run(s) ok" in done.stdout  # reported once, by the sweep


def test_a_running_record_is_neither_done_nor_a_result_and_is_settled_as_failed(tmp_path):
    run_dir = tmp_path / "runs" / "m" / "d" / "c" / "seed0" / "abc"
    started = {"task": "train", "method": "m", "dataset": "d", "category": "c", "seed": 0, "status": RUNNING,
               "config_hash": "abc", "started_at": "2024-01-01T00:00:00+00:00"}
    write_result(run_dir, started)
    assert not is_complete(run_dir, "abc")  # a resumed suite redoes it
    board = build_leaderboard([{**started, "_path": str(run_dir / "result.json")}], paper={})
    assert all(cell.failed == 0 and not cell.values for _, _, _, cell in board.category_cells())
    error = {"type": "DDPJobFailed", "message": "exit code -9", "traceback": ""}
    settled = settle_result(run_dir, error, {"task": "train", "extra": 1})
    assert settled["status"] == "failed" and settled["config_hash"] == "abc" and settled["extra"] == 1
    assert json.loads((run_dir / "result.json").read_text())["status"] == "failed"
    assert settle_result(run_dir, {"type": "Other"}, {})["error"] == error  # a finished record is kept
