"""Cluster details that only show on SLURM, on shared file systems or with several GPUs, faked here: SLURM
environment variables, a file system without flock, a second DDP rank, GPU counts."""

from __future__ import annotations

import errno
import mmap
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from omegaconf import OmegaConf

from anobench import backbones
from anobench.errors import AnobenchError, ConfigError, LockWarning, WeightsNotFoundError
from anobench.io import folder_lock
from anobench.results.record import peak_memory, reset_peak_memory
from anobench.tasks import bench, ddp, devices, launch, run
from anobench.tasks import plan as planning
from tests.test_suite import TINY_OVERRIDES, TINY_SUITE

SLURM_ENV = ("SLURM_NTASKS", "SLURM_NTASKS_PER_NODE", "SLURM_TASKS_PER_NODE", "SLURM_JOB_NAME", "SLURM_NNODES",
             "SLURM_PROCID", "SLURM_LOCALID", "RANK", "LOCAL_RANK", "GROUP_RANK", "LOCAL_WORLD_SIZE", "NODE_RANK")
DDP_TRAINER = {"strategy": "ddp_find_unused_parameters_true", "accelerator": "gpu", "devices": "auto", "num_nodes": 1}


@pytest.fixture
def slurm(monkeypatch):
    """A clean slate of launcher variables; returns a setter for a fake SLURM job's."""
    for name in SLURM_ENV:
        monkeypatch.delenv(name, raising=False)

    def job(name: str, ntasks: int, per_node: int | None = None, nodes: int = 1) -> None:
        monkeypatch.setenv("SLURM_JOB_NAME", name)
        monkeypatch.setenv("SLURM_NTASKS", str(ntasks))
        monkeypatch.setenv("SLURM_NNODES", str(nodes))
        if per_node is not None:
            monkeypatch.setenv("SLURM_NTASKS_PER_NODE", str(per_node))

    return job


def _gpus(monkeypatch, count: int) -> None:
    monkeypatch.setattr(torch.cuda, "device_count", lambda: count)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: count > 0)


# ----------------------------------------------------------------------------- 4: SLURM detection
@pytest.mark.parametrize("job_name", ["interactive", "bash"])
def test_in_an_interactive_allocation_lightning_starts_the_ranks(slurm, job_name):
    """salloc / srun --pty bash: Lightning ignores SLURM there and re-runs argv, so the job's argv must be set."""
    trainer = OmegaConf.create(DDP_TRAINER)
    slurm(job_name, ntasks=4, per_node=4)
    assert ddp.ranks_started_by_lightning(trainer) and not ddp.slurm_starts_ranks()
    slurm("anobench_bench", ntasks=4, per_node=4)  # sbatch + srun: srun starts them
    assert not ddp.ranks_started_by_lightning(trainer) and ddp.slurm_starts_ranks()


def test_devices_against_ntasks_per_node_is_one_clear_error_before_the_fit(slurm, monkeypatch, tmp_path):
    """A one-task sbatch with `devices: auto` on a 4-GPU node: one ConfigError naming both, not Lightning's
    ValueError in every job."""
    _gpus(monkeypatch, 4)
    slurm("anobench_bench", ntasks=1, per_node=1)
    cfg = OmegaConf.create({"trainer": DDP_TRAINER})
    with pytest.raises(ConfigError, match=r"trainer.devices=auto is 4 device\(s\).*--ntasks-per-node=1"):
        run.fit(run.BuiltRun(cfg=cfg, datamodule=None, module=None), tmp_path)  # type: ignore[arg-type]
    ddp.check_slurm_tasks(OmegaConf.create({**DDP_TRAINER, "devices": 1}))  # one task, one device: fine
    monkeypatch.setenv("SLURM_NTASKS_PER_NODE", "4")
    ddp.check_slurm_tasks(cfg.trainer)
    monkeypatch.setenv("SLURM_NNODES", "2")
    with pytest.raises(ConfigError, match="trainer.num_nodes=1.*--nodes=2"):
        ddp.check_slurm_tasks(cfg.trainer)
    slurm("interactive", ntasks=1, per_node=1, nodes=1)  # Lightning starts the ranks: nothing to check
    ddp.check_slurm_tasks(cfg.trainer)


def test_a_slurm_suite_whose_ddp_devices_differ_from_its_tasks_per_node_is_refused_before_submitting(
        slurm, tmp_path, monkeypatch):
    monkeypatch.setenv("ANOBENCH_DATA_DIR", str(tmp_path / "data"))
    suite = planning.load_suite("method", TINY_SUITE[1:3] + ["seeds=[0]", "categories=[synthetic/weave]",
                                                           TINY_OVERRIDES])
    with pytest.raises(ConfigError, match="trainer.devices=2 .*hydra.launcher.tasks_per_node=1.*tasks_per_node=2"):
        bench.run_suite(suite, tmp_path / "results", extra_overrides=["trainer=ddp", "trainer.devices=2"],
                        launcher=["hydra/launcher=submitit_slurm"])
    assert not list((tmp_path / "results").glob("**/.submitit"))
    # devices=auto is checked against the GPUs the job asks SLURM for
    job = planning.PlannedJob(job=planning.Job("memae", "mvtec/bottle", 0, None), run_dir=tmp_path, config_hash="x",
                              dataset="mvtec", category="bottle", distributed=True, devices="auto")
    slurm_config = OmegaConf.create({"hydra": {"launcher": {"_target_": "x.SlurmLauncher", "tasks_per_node": 1,
                                                            "gpus_per_node": 4}}})
    with pytest.raises(ConfigError, match=r"trainer.devices=auto \(4 device"):
        launch.check_slurm_tasks(slurm_config, [job])
    slurm_config.hydra.launcher.tasks_per_node = 4
    launch.check_slurm_tasks(slurm_config, [job])


# ----------------------------------------------------------------------------- 5: step checkpoints
def test_step_checkpoints_are_saved_by_what_this_fit_saved_not_by_the_files_there(tmp_path):
    """Under DDP the save is collective: a slower rank that sees rank 0's file must still save (and meet the
    barrier); a step is saved once even when global_step stays put over several batches."""
    callback = run.StepCheckpoints(tmp_path, [2, 4])
    saved: list[Path] = []
    trainer = SimpleNamespace(global_step=2, save_checkpoint=lambda path, weights_only: saved.append(path))
    (tmp_path / run.CHECKPOINT_DIR).mkdir()
    (tmp_path / run.CHECKPOINT_DIR / "step2.ckpt").write_bytes(b"rank 0 was faster")
    callback.on_train_batch_end(trainer)
    callback.on_train_batch_end(trainer)  # the next batch of the same optimiser step
    trainer.global_step = 3
    callback.on_train_batch_end(trainer)
    trainer.global_step = 4
    callback.on_train_batch_end(trainer)
    assert [p.name for p in saved] == ["step2.ckpt", "step4.ckpt"]


# ----------------------------------------------------------------------------- 7: one GPU per worker
def test_local_workers_get_one_gpu_each_on_a_multi_gpu_node(monkeypatch, tmp_path):
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    _gpus(monkeypatch, 1)
    assert devices.worker_gpu_slots(2) == ()  # one GPU: the workers share it
    assert launch.worker_task("hydra_plugins.x.JoblibLauncher", 2) is launch.suite_job_task
    _gpus(monkeypatch, 2)
    assert devices.worker_gpu_slots(2) == ("0/0", "1/0")
    assert devices.worker_gpu_slots(3) == ("0/0", "1/0", "0/1", "1/1")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3,5")  # e.g. what SLURM granted
    slots = devices.worker_gpu_slots(devices.joblib_workers(2))
    assert slots == ("3/0", "5/0")
    task = launch.worker_task("hydra_plugins.hydra_joblib_launcher.joblib_launcher.JoblibLauncher", 2)
    assert task.func is launch.gpu_worker_task and task.keywords == {"slots": slots}
    assert launch.worker_task("hydra._internal.core_plugins.basic_launcher.BasicLauncher", 2) is launch.suite_job_task

    # Two workers: each takes its own slot (held while the worker lives), and trains with only its GPU visible.
    first, held = devices.take_slot(slots, tmp_path)
    second, _ = devices.take_slot(slots, tmp_path)
    assert (first, second) == ("3", "5")
    held.close()  # the first worker ended: its slot is free again
    assert devices.take_slot(slots, tmp_path)[0] == "3"

    seen = []
    monkeypatch.setattr(launch, "suite_job_task", lambda cfg: seen.append(devices.os.environ["CUDA_VISIBLE_DEVICES"]))
    monkeypatch.setattr(devices, "default_lock_dir", lambda: tmp_path / "worker")
    monkeypatch.setattr(devices, "_CLAIMED", None)
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: False)
    job = OmegaConf.create({"trainer": {"accelerator": "gpu"}})
    task(job)
    task(job)  # the same worker keeps its GPU
    assert seen == ["3", "3"]


# ----------------------------------------------------------------------------- 11: cluster details
def test_a_file_system_without_flock_goes_on_without_the_lock_and_says_so(tmp_path, monkeypatch):
    """Lustre/NFS mounted without flock: flock raises ENOLCK for every lock (results, suite, teacher cache)."""

    def no_locks(fd, operation):
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr("anobench.io.fcntl.flock", no_locks)
    ran = []
    with pytest.warns(LockWarning, match="does not support file locks.*No locks available"):
        with folder_lock(tmp_path, ".lock"):
            ran.append("exclusive")
    with pytest.warns(LockWarning):
        with folder_lock(tmp_path, ".workers.lock", exclusive=False, busy_message="busy"):
            ran.append("shared, not waited for")
    assert ran == ["exclusive", "shared, not waited for"]
    with pytest.raises(RuntimeError, match="inside"):  # the body's own errors still propagate
        with folder_lock(tmp_path, ".lock"):
            raise RuntimeError("inside")


def test_a_held_lock_is_still_refused(tmp_path):
    with folder_lock(tmp_path, ".suite.lock", busy_message="held"):
        with pytest.raises(AnobenchError, match="held"):
            with folder_lock(tmp_path, ".suite.lock", busy_message="held"):
                pass


def test_only_the_first_rank_of_a_node_downloads_backbone_weights(tmp_path, monkeypatch, slurm):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.delenv("ANOBENCH_OFFLINE", raising=False)
    downloads = []
    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", lambda *a, **k: downloads.append(a))
    cached = backbones.expected_weights_file("resnet18")

    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setattr(backbones, "RANK_WAIT_S", 0.2)
    with pytest.raises(WeightsNotFoundError, match="DDP rank waited.*ANOBENCH_OFFLINE=1"):
        backbones.resolve_weights("resnet18")
    assert downloads == []

    monkeypatch.setattr(backbones, "RANK_WAIT_S", 30.0)

    def rank0_downloads() -> None:
        time.sleep(0.5)
        cached.parent.mkdir(parents=True, exist_ok=True)
        cached.write_bytes(b"weights")

    writer = threading.Thread(target=rank0_downloads)
    writer.start()
    assert backbones.resolve_weights("resnet18") == cached and downloads == []
    writer.join()
    cached.unlink()
    monkeypatch.setenv("LOCAL_RANK", "0")  # the node's first rank downloads
    backbones.resolve_weights("resnet18")
    assert len(downloads) == 1


def test_peak_memory_is_each_jobs_own(monkeypatch, tmp_path):
    """The jobs of an in-process suite share a process: each record reports its own peaks."""
    region = mmap.mmap(-1, 256 * 2**20)
    for offset in range(0, len(region), 4096):
        region[offset] = 1
    region.close()
    before = peak_memory()["peak_rss_mb"]
    reset_peak_memory()
    assert peak_memory()["peak_rss_mb"] < before - 200

    reset_gpus = []
    _gpus(monkeypatch, 2)
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: True)
    monkeypatch.setattr(torch.cuda, "reset_peak_memory_stats", reset_gpus.append)
    reset_peak_memory()
    assert reset_gpus == [0, 1]

    calls = []
    monkeypatch.setattr(run, "reset_peak_memory", lambda: calls.append("reset"))

    def build(cfg):
        calls.append("build")
        raise RuntimeError("stop here")

    monkeypatch.setattr(run, "build", build)
    from tests.test_config import _compose

    record = run.execute(_compose(["method=memae", "data=synthetic/washer"]), tmp_path, "train", reraise=False)
    assert calls == ["reset", "build"] and record["status"] == "failed"


def test_a_ddp_run_records_its_global_batch_and_is_not_labelled_paper():
    cfg = OmegaConf.create({"budget_label": "paper", "experiment_name": "memae_paper",
                            "trainer": {"name": "ddp", "max_epochs": 60, "max_steps": -1},
                            "method": {"input": {"batch_size": 8}}})

    def trainer(world_size: int, accumulate: int = 1) -> SimpleNamespace:
        return SimpleNamespace(world_size=world_size, accumulate_grad_batches=accumulate, global_step=100,
                               current_epoch=60)

    one = run.budget_of(cfg, trainer(1))
    assert one["label"] == "paper" and one["global_batch_size"] == 8
    two = run.budget_of(cfg, trainer(2))
    assert two["global_batch_size"] == 16 and two["world_size"] == 2 and two["global_step"] == 100
    assert two["label"] != "paper" and "global batch 16" in two["label"]
    assert run.budget_of(cfg, trainer(1, accumulate=4))["global_batch_size"] == 32
    assert run.budget_of(cfg, None)["label"] == "paper"  # before the fit: what the config says


@pytest.mark.parametrize("method", ["nbs", "synthcp"])
def test_methods_without_deterministic_cuda_kernels_document_warn_only(method):
    readme = (Path(run.__file__).parents[1] / "methods" / method / "README.md").read_text()
    assert "trainer.deterministic=warn" in readme and "Determinism on CUDA" in readme
