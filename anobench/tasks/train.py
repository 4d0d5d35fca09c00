"""`anobench train`: fit a method on a category, test it, record result.json (anobench.tasks.run does the work).

A failure is recorded as a failed result.json, then re-raised in a single run (non-zero exit) or swallowed
in a multirun, so the other jobs of the sweep still run (Hydra's end-of-sweep hook would never run after a
raising job); the CLI publishes the leaderboard once, after the command's jobs, from the result files.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from anobench.results.record import RESULT_FILE, settle_result, write_result
from anobench.tasks import ddp, run


def hydra_run_dir() -> Path:
    """This job's folder (Hydra's run or sweep output dir)."""
    from hydra.core.hydra_config import HydraConfig

    return Path(HydraConfig.get().runtime.output_dir)


def is_multirun() -> bool:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def train(cfg: DictConfig) -> dict[str, Any]:
    """Fit `cfg.method` on `cfg.data`, test it and record the result; returns the result record."""
    if not ddp.is_primary_process():
        return run.fit_as_worker(cfg, hydra_run_dir())
    if is_multirun() and ddp.ranks_started_by_lightning(cfg.trainer):
        return train_in_own_process(cfg)
    with ddp.own_process_group():
        return run.execute(cfg, hydra_run_dir(), "train", reraise=not is_multirun())


def train_in_own_process(cfg: DictConfig) -> dict[str, Any]:
    """A DDP job of a sweep (`-m`) or suite (`anobench bench`) whose ranks Lightning starts: run as its own
    ``anobench train <job overrides>`` process (`ddp.run_job_process`), so that the ranks re-run exactly this
    job and a failing rank kills this job only. Never raises: a job that ends without a final record (a rank
    failed and Lightning killed rank 0) gets a failed one naming the exit code, with the job's last output."""
    from hydra.core.hydra_config import HydraConfig


    run_dir = hydra_run_dir()
    fallback = run.start_record(cfg, "train")  # what the record says if the job never wrote one
    overrides = [*HydraConfig.get().overrides.task, f"hydra.run.dir={ddp.quote(run_dir)}"]
    code, output = ddp.run_job_process("train", overrides, run_dir)
    error = {"type": "DDPJobFailed",
             "message": f"the job's processes ended with exit code {code} before recording a result (a rank > 0 "
                        f"failed, and Lightning then kills rank 0, or the job was killed); every rank's output is "
                        f"in {ddp.JOB_OUTPUT_FILE} beside this result.json",
             "traceback": output[-8000:]}
    record = settle_result(run_dir, error, fallback)
    if code and record.get("status") == "failed" and "job_output" not in record["error"]:
        # rank 0's own error is often only the symptom (gloo: "Connection closed by peer"): point at every rank's
        record["error"] = {**record["error"], "job_output": ddp.JOB_OUTPUT_FILE, "job_exit_code": code}
        write_result(run_dir, record)
    run.announce_result(run_dir / RESULT_FILE, cfg)
    if record.get("status") != "ok":
        print(f"job failed ({record['error'].get('type')}: {record['error'].get('message')}); recorded in {run_dir}")
    return record
