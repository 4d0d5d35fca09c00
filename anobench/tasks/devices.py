"""One GPU per local worker: `anobench bench ... n_jobs=N` on a node with several GPUs.

Joblib's workers are plain processes: each would train on cuda:0 while the other GPUs idle. Instead the
launcher hands the workers a list of slots (`worker_gpu_slots`: N slots spread over the visible GPUs), and
each worker, before its first job touches CUDA, takes the first free slot for its whole life and sets
CUDA_VISIBLE_DEVICES to that slot's GPU (`claim_worker_gpu`). A slot is an flock on a file the worker keeps
open, so the OS frees it when the worker ends (a respawned worker takes a free one again), and workers of two
suites on one node share the slots too. With one GPU (or none) there are no slots: N workers share it, which
is what n_jobs=2 on one GPU means.
"""

from __future__ import annotations

import fcntl
import os
import tempfile
import warnings
from pathlib import Path
from typing import IO, Any

# (gpu, open lock file) of this worker process once it took a slot; kept open for the process's life.
_CLAIMED: tuple[str, IO[Any]] | None = None


def joblib_workers(n_jobs: Any) -> int:
    """Joblib's n_jobs as a count of workers (-1: one per CPU, -2: all but one, ...)."""
    n = int(n_jobs if n_jobs is not None else -1)
    return n if n > 0 else max(1, (os.cpu_count() or 1) + 1 + n)


def visible_gpus() -> list[str]:
    """The GPUs this process sees, named as CUDA_VISIBLE_DEVICES names them (indices, or UUIDs under SLURM/MIG)."""
    import torch

    count = torch.cuda.device_count()
    listed = [g.strip() for g in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if g.strip()]
    return listed[:count] if listed else [str(i) for i in range(count)]


def worker_gpu_slots(n_workers: int) -> tuple[str, ...]:
    """`<gpu>/<k>` slots for `n_workers` local workers, the GPUs' first slots first (so 2 workers on 2 GPUs get
    one each, 4 workers two each); empty with fewer than two GPUs or one worker."""
    gpus = visible_gpus()
    if len(gpus) < 2 or n_workers < 2:
        return ()
    per_gpu = -(-n_workers // len(gpus))
    return tuple(f"{gpu}/{k}" for k in range(per_gpu) for gpu in gpus)


def default_lock_dir() -> Path:
    """Per user and node: workers of every suite on this node take their slots here."""
    return Path(tempfile.gettempdir()) / f"anobench-gpu-slots-{os.getuid()}"


def take_slot(slots: tuple[str, ...], lock_dir: Path) -> tuple[str, IO[Any] | None]:
    """The first free slot's GPU and its held lock file; with every slot taken (or no flock here), the GPU of
    slot pid mod len(slots), unlocked, with a warning: sharing a GPU beats failing the job."""
    lock_dir.mkdir(parents=True, exist_ok=True)
    for slot in slots:
        gpu, _, k = slot.partition("/")
        handle = open(lock_dir / f"gpu-{gpu.replace(os.sep, '_')}-{k}.lock", "a+")  # noqa: SIM115 - held for life
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.close()
            continue
        except OSError as error:
            handle.close()
            reason = f"no file locks in {lock_dir} ({error.strerror or error})"
            break
        return gpu, handle
    else:
        reason = f"all {len(slots)} slots are taken (another suite on this node?)"
    gpu = slots[os.getpid() % len(slots)].partition("/")[0]
    warnings.warn(f"GPU slot for this worker: {reason}; using GPU {gpu}, possibly shared", stacklevel=2)
    return gpu, None


def claim_worker_gpu(slots: tuple[str, ...], lock_dir: Path | None = None) -> str:
    """Bind this worker process to one GPU for its life (CUDA_VISIBLE_DEVICES); returns the GPU."""
    global _CLAIMED
    import torch

    if _CLAIMED is None:
        if torch.cuda.is_initialized():  # too late for CUDA_VISIBLE_DEVICES: say so rather than pretend
            warnings.warn("CUDA was started in this worker before it took a GPU slot; it stays on its GPU",
                          stacklevel=2)
            return os.environ.get("CUDA_VISIBLE_DEVICES", "")
        gpu, handle = take_slot(slots, lock_dir or default_lock_dir())
        _CLAIMED = (gpu, handle)  # type: ignore[assignment]
    os.environ["CUDA_VISIBLE_DEVICES"] = _CLAIMED[0]
    return _CLAIMED[0]

