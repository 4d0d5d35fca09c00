"""result.json: one file per run, saying what was measured and everything that produced it."""

from __future__ import annotations

import datetime as _dt
import functools
import importlib.metadata
import json
import os
import platform
import resource
import subprocess
import traceback
from pathlib import Path
from typing import Any

from anobench.io import atomic_write_json

RESULT_FILE = "result.json"
SCHEMA_VERSION = 1
# A run's status while it runs: written when it starts, replaced by "ok" or "failed" when it ends, so a run that
# is killed (or whose DDP rank 0 is killed) still leaves a record; it never counts as done (anobench.tasks.plan).
RUNNING = "running"
METRIC_KEYS = ("image_auroc", "pixel_auroc", "pro")  # MVTec's protocol: the leaderboard's tables by default
# What later papers report beside them: in result.json, on the leaderboard on request (`--metrics`)
EXTRA_METRIC_KEYS = ("image_ap", "pixel_ap", "image_f1_max", "pixel_f1_max")
ALL_METRIC_KEYS = METRIC_KEYS + EXTRA_METRIC_KEYS
_PACKAGES = ("anobench", "torch", "torchvision", "lightning", "hydra-core", "omegaconf", "numpy",
             "scipy", "scikit-learn", "pillow")


def now_iso() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


@functools.lru_cache(maxsize=None)
def git_sha(start: str | Path | None = None) -> str | None:
    """Commit of the anobench source tree (with '-dirty' if it has local changes); None outside git.

    Read once per process: the code a process runs is the code it imported, so later jobs of an
    in-process sweep must not report a commit made while the sweep was running."""
    where = Path(start) if start else Path(__file__).resolve().parent
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=where, capture_output=True, text=True,
                             timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=where,
                               capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return sha + ("-dirty" if dirty else "")


def library_versions() -> dict[str, str | None]:
    versions: dict[str, str | None] = {"python": platform.python_version()}
    for name in _PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def device_info(accelerator: str | None = None) -> dict[str, Any]:
    """What the run executed on: CPU model and cores, and the GPU when one was used."""
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info: dict[str, Any] = {
        "accelerator": accelerator or "cpu",
        "cpu": cpu,
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "platform": platform.platform(),
    }
    if accelerator in ("gpu", "cuda", "auto") and torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
        info["gpu_count"] = torch.cuda.device_count()
    return info


def reset_peak_memory() -> None:
    """Start a job's peaks afresh: the jobs of an in-process sweep or suite share one process, and each
    record must report its own job's peak, not the running maximum of the jobs before it."""
    import torch

    if torch.cuda.is_available() and torch.cuda.is_initialized():
        for index in range(torch.cuda.device_count()):
            torch.cuda.reset_peak_memory_stats(index)
    try:  # Linux: resets VmHWM (ru_maxrss cannot be reset, hence peak_memory reads VmHWM)
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass


def _peak_rss_mb() -> float:
    """VmHWM where /proc has it (reset by reset_peak_memory), else ru_maxrss (the whole process's peak)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0  # kB
    except (OSError, ValueError, IndexError):
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: KiB


def peak_memory() -> dict[str, float | None]:
    """Peak resident memory of this process (MiB) and peak CUDA memory where CUDA was used, since the job
    started (reset_peak_memory)."""
    import torch

    rss_mb = _peak_rss_mb()
    gpu_mb = None
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        gpu_mb = torch.cuda.max_memory_allocated() / 2**20
    return {"peak_rss_mb": round(rss_mb, 1), "peak_gpu_mb": None if gpu_mb is None else round(gpu_mb, 1)}


def failure_info(error: BaseException) -> dict[str, str]:
    return {
        "type": type(error).__name__,
        "message": str(error),
        "traceback": "".join(traceback.format_exception(type(error), error, error.__traceback__))[-8000:],
    }


def write_result(run_dir: str | Path, record: dict[str, Any]) -> Path:
    """Atomically write `record` as run_dir/result.json and return the path."""
    path = Path(run_dir) / RESULT_FILE
    atomic_write_json(path, {"schema_version": SCHEMA_VERSION, **record})
    return path


def settle_result(run_dir: str | Path, error: dict[str, str], fallback: dict[str, Any]) -> dict[str, Any]:
    """The run's final record: its result.json when the run finished it (ok or failed); otherwise (none, unreadable
    or still `running`: the run was killed or lost) a failed one written now, with `error` (a `failure_info`),
    keeping what the `running` record knew and `fallback`'s entries for what it did not."""
    path = Path(run_dir) / RESULT_FILE
    started: dict[str, Any] = {}
    if path.is_file():
        try:
            started = read_result(path)
        except ValueError:
            started = {}
        if started.get("status") not in (None, RUNNING):
            return started
    record = {**fallback, **started, "status": "failed", "error": error, "finished_at": now_iso()}
    write_result(run_dir, record)
    return record


def read_result(path: str | Path) -> dict[str, Any]:
    """Read one result.json; a truncated or foreign file raises ValueError naming the file."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as error:
        raise ValueError(f"{path}: not a readable result file ({error})") from error
    missing = [k for k in ("method", "dataset", "category", "seed", "status") if k not in data]
    if missing:
        raise ValueError(f"{path}: result file lacks the keys {missing}")
    return data
