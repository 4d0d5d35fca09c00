"""The prepared GPU check: run it the moment a GPU is lent, then copy its table into docs/suites.md.

    python scripts/gpu_check.py [--device cuda|cpu] [--quick] [--steps 20] [--out gpu_check] [--budget-s 540]
                                [--experiments memae_paper ...] [--ddp-methods memae ognet nbs gradcon]

Checks, each written as one JSON line to <out>/gpu_check.jsonl as soon as it ends (a crash keeps the lines
before it), then a markdown table <out>/gpu_check.md:

- ``environment``: versions, device name, float32/TF32 settings (anobench/precision.py).
- ``experiment:<name>``: every ``experiment=<method>_paper`` at its paper sizes and batch for `--steps` steps on
  the device (tiny synthetic data, random backbone weights, as tests/methods/test_paper_experiments.py does
  offline): s/step (first step excluded), inference s per test image, peak GPU memory, and the paper budget's
  training hours extrapolated per category (MVTec AD's mean of 242 training images) and for 15 categories.
- ``patch_svdd_precision``: Patch SVDD's K = 32 nearest-neighbour distances on the device with TF32 on and off
  against float64 on the CPU (random encoder, synthetic images): largest relative change, share of changed
  neighbours, image / pixel AUROC and PRO deltas.
- ``ddp:<method>``: two DDP ranks (gloo on one GPU's host CPU, NCCL on two GPUs; sync_batchnorm, a step
  checkpoint), 4 steps.
- ``data_loading``: images/s of a 256² training loader with 0 and 8 workers.

Every check is time-bounded: the whole script stops starting checks after `--budget-s` (default 540 s, within
a 10-minute device call), and a check that fails is recorded as failed with its error; the rest still run.
`--device cpu --quick` is what the tests run (one experiment, one DDP method, small sizes).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any, Callable, Iterator

REPO = Path(__file__).resolve().parents[1]
MVTEC_MEAN_TRAIN_IMAGES = 3629 / 15  # MVTec AD: 3,629 training images over 15 categories
SYNTHETIC = {"n_train": 8, "n_test_good": 3, "n_test_per_defect": 1}
DDP_METHODS = ("memae", "ognet", "nbs", "gradcon")


def _synthetic(sizes: dict[str, int]) -> list[str]:
    return [f"data.synthetic.{key}={value}" for key, value in sizes.items()]


def offline_overrides(name: str, data_dir: Path) -> list[str]:
    """What an offline machine lacks for experiment `name` (ImageNet weights and images), replaced: random weights of
    the same architecture, and the synthetic washer's training images for Uninformed Students' distillation (the
    paper's `distill_data=imagefolder` path, 2 teacher steps). tests/methods/test_paper_experiments.py uses it too."""
    extra = {"synthcp_paper": ["backbone.pretrained=false"],
             "uninformed_students_paper": ["backbone.pretrained=false", "method.module.teacher.steps=2",
                                           f"method.module.teacher.image_folder={data_dir}/synthetic/washer/train/good"]}
    return extra.get(name, [])


def _compose(overrides: list[str]) -> Any:
    from hydra import compose, initialize_config_dir

    from anobench.config import config_dir

    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        return compose(config_name="train", overrides=overrides)


@contextlib.contextmanager
def allow_tf32(enabled: bool) -> Iterator[None]:
    """TF32 in float32 matmuls and convolutions on (the GPU defaults people run with) or off (strict float32)."""
    import torch

    from anobench.precision import strict_float32

    if not enabled:
        with strict_float32():
            yield
        return
    backends = {"cuda.matmul": torch.backends.cuda.matmul, "cudnn.conv": getattr(torch.backends.cudnn, "conv", None)}
    if all(b is not None and hasattr(b, "fp32_precision") for b in backends.values()):
        saved = {k: b.fp32_precision for k, b in backends.items()}
        try:
            for b in backends.values():
                b.fp32_precision = "tf32"
            yield
        finally:
            for k, b in backends.items():
                b.fp32_precision = saved[k]
        return
    saved_legacy = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    try:
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved_legacy


def check_environment(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    import torch

    from anobench.precision import float32_settings
    from anobench.results.record import library_versions

    info: dict[str, Any] = {"versions": library_versions(), "float32": float32_settings(),
                            "cuda_available": torch.cuda.is_available()}
    if args.device == "cuda" and torch.cuda.is_available():
        info.update(device=torch.cuda.get_device_name(0), capability=".".join(map(str, torch.cuda.get_device_capability(0))),
                    memory_gb=round(torch.cuda.get_device_properties(0).total_memory / 2**30, 1))
    return info


def _paper_steps_per_category(name: str) -> tuple[float, str]:
    """Optimiser steps of the paper budget on a mean MVTec AD category, and how they were counted."""
    cfg = _compose([f"experiment={name}", "data=synthetic/washer"])
    steps = cfg.trainer.get("max_steps")
    if steps is not None and int(steps) > 0:
        return float(steps), f"max_steps {int(steps)}"
    epochs = int(cfg.trainer.max_epochs)
    repeats = int(cfg.method.input.get("train_repeats") or 1)
    batch = int(cfg.method.input.batch_size)
    per_epoch = math.ceil(MVTEC_MEAN_TRAIN_IMAGES * repeats / batch)
    return float(epochs * per_epoch), f"{epochs} epochs x {per_epoch} steps (242 images x {repeats} / batch {batch})"


def check_experiment(name: str, args: argparse.Namespace, work: Path) -> dict[str, Any]:
    import lightning as L
    import torch

    from anobench.tasks import run

    data_dir = work / "data"
    trainer = "gpu" if args.device == "cuda" else "cpu"
    cfg = _compose([f"experiment={name}", f"trainer={trainer}", f"trainer.max_steps={args.steps}",
                    "trainer.max_epochs=null", "data=synthetic/washer",
                    *_synthetic(SYNTHETIC), f"paths.data_dir={data_dir}", f"paths.results_dir={work / 'results'}",
                    "visualize.enabled=false", *offline_overrides(name, data_dir)])
    step_times: list[float] = []

    class StepTimer(L.Callback):
        def on_train_batch_start(self, *_: Any) -> None:
            self.start = time.perf_counter()

        def on_train_batch_end(self, *_: Any) -> None:
            if torch.cuda.is_available() and args.device == "cuda":
                torch.cuda.synchronize()
            step_times.append(time.perf_counter() - self.start)

    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    built = run.build(cfg)
    fitter = run.build_trainer(cfg.trainer, work / name, logger=False, enable_progress_bar=False,
                               enable_model_summary=False, callbacks=[StepTimer()])
    fitter.fit(built.module, datamodule=built.datamodule)
    start = time.perf_counter()
    run.evaluate_on_test_set(built.module, built.datamodule, run.EvaluationSettings.from_config(cfg), fitter)
    inference_s = time.perf_counter() - start
    timed = step_times[1:] or step_times
    s_per_step = sum(timed) / len(timed)
    steps, counted = _paper_steps_per_category(name)
    hours = s_per_step * steps / 3600
    return {"steps": fitter.global_step, "s_per_step": round(s_per_step, 4),
            "inference_s_per_image": round(inference_s / len(built.datamodule.test_samples), 4),
            "peak_gpu_mb": round(torch.cuda.max_memory_allocated() / 2**20) if args.device == "cuda" else None,
            "paper_steps_per_category": steps, "paper_steps_counted": counted,
            "paper_hours_per_category": round(hours, 2), "paper_hours_15_categories": round(15 * hours, 1)}


def check_patch_svdd_precision(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    import copy

    import numpy as np
    import torch

    from anobench.data import AnomalyDataModule
    from anobench.methods.patch_svdd import PatchSVDDModel
    from anobench.methods.patch_svdd.nearest import nearest_distances
    from anobench.methods.patch_svdd.torch_model import distribute_scores
    from anobench.metrics.auroc import image_auroc, pixel_auroc
    from anobench.metrics.pro import aupro

    sizes = {"n_train": 3, "n_test_good": 2, "n_test_per_defect": 1} if args.quick else \
        {"n_train": 20, "n_test_good": 6, "n_test_per_defect": 2}
    dm = AnomalyDataModule(dataset="synthetic", category="washer", root=str(work / "data" / "synthetic"),
                           image_size=256, synthetic={**sizes, "image_size": 256}, interpolation="nearest")
    dm.setup("test")
    train = dm.training_images()
    test = torch.cat([b["image"] for b in dm.test_dataloader()])
    labels = np.array([s.label for s in dm.test_samples])
    masks = [dm.load_mask(i) for i in range(len(dm.test_samples))]
    torch.manual_seed(0)
    model = PatchSVDDModel().eval()
    model.fit_mean([train])

    def distances(m: PatchSVDDModel, device: str, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        with torch.no_grad():
            emb = lambda x: m.dense_embeddings(m.normalize(x.to(device, dtype)))[1]
            flat = lambda e: e.permute(0, 2, 3, 1).reshape(-1, e.shape[1])
            bank, queries = flat(emb(train)), emb(test)
            d, index = nearest_distances(flat(queries), bank, return_index=True)
        return d.reshape(queries.shape[0], queries.shape[2], queries.shape[3]).double().cpu(), index.cpu()

    reference, ref_index = distances(copy.deepcopy(model).double(), "cpu", torch.float64)
    device_model = copy.deepcopy(model).to(args.device)
    out: dict[str, Any] = {"images": {"train": len(train), "test": len(test)}}

    def metrics(d: torch.Tensor) -> dict[str, float]:
        maps = distribute_scores(d.float(), (256, 256), 32, 4).numpy()
        return {"image_auroc": image_auroc(maps.reshape(len(maps), -1).max(1), labels),
                "pixel_auroc": pixel_auroc(list(maps), masks), "pro": aupro(list(maps), masks)}

    base = metrics(reference)
    for tf32 in (False, True):
        with allow_tf32(tf32):
            d, index = distances(device_model, args.device, torch.float32)
        ours = metrics(d)
        out["tf32_on" if tf32 else "tf32_off"] = {
            "max_relative_change": float(((d - reference).abs() / reference.clamp_min(1e-12)).max()),
            "changed_neighbours": float((index != ref_index).double().mean()),
            **{f"{k}_delta": round(ours[k] - base[k], 6) for k in base}}
    out["float64_metrics"] = {k: round(v, 4) for k, v in base.items()}
    if args.device != "cuda":
        out["note"] = "TF32 exists only on CUDA (Ampere and later): on CPU both rows are plain float32"
    return out


def check_ddp(method: str, args: argparse.Namespace, work: Path) -> dict[str, Any]:
    """Two DDP ranks through the CLI (as a user runs it), 4 steps, a step checkpoint at step 2, sync_batchnorm on GPUs.

    On two or more GPUs the ranks use one GPU each (NCCL); on one GPU they run on the CPU with gloo, because
    Lightning gives every rank its own device and refuses two ranks on one GPU (recorded as `ranks_on`)."""
    import torch

    gpus = torch.cuda.device_count() if args.device == "cuda" else 0
    accelerator = "gpu" if gpus >= 2 else "cpu"
    run_dir = work / "ddp" / method
    env = {**os.environ, "ANOBENCH_DATA_DIR": str(work / "data"), "ANOBENCH_RESULTS_DIR": str(work / "results")}
    command = [sys.executable, "-m", "anobench", "train", f"method={method}", "data=synthetic/washer",
               "trainer=ddp", f"trainer.accelerator={accelerator}", "trainer.devices=2",
               f"trainer.sync_batchnorm={str(accelerator == 'gpu').lower()}",  # SyncBatchNorm needs GPU modules
               "trainer.max_steps=4", "trainer.max_epochs=null", "checkpoint_steps=[2]", "method.input.batch_size=2",
               "method.input.image_size=64", "backbone=none", "visualize.enabled=false", *_synthetic(SYNTHETIC),
               f"hydra.run.dir={run_dir}"]
    start = time.perf_counter()
    done = subprocess.run(command, cwd=work, env=env, capture_output=True, text=True, timeout=args.ddp_timeout_s)
    record_path = run_dir / "result.json"
    record = json.loads(record_path.read_text()) if record_path.is_file() else {}
    if done.returncode != 0 or record.get("status") != "ok":
        raise RuntimeError(f"exit {done.returncode}, status {record.get('status')}: {done.stderr.strip()[-800:]}")
    return {"ranks_on": f"{accelerator} ({'nccl' if accelerator == 'gpu' else 'gloo'})",
            "wall_s": round(time.perf_counter() - start, 1), "world_size": record["budget"].get("world_size"),
            "global_step": record["budget"].get("global_step"),
            "step_checkpoint": (run_dir / "checkpoints" / "step2.ckpt").is_file(),
            "image_auroc": record["metrics"].get("image_auroc")}


def check_data_loading(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    from anobench.data import AnomalyDataModule

    out: dict[str, Any] = {}
    for workers in (0, 2 if args.quick else 8):
        dm = AnomalyDataModule(dataset="synthetic", category="washer", root=str(work / "data" / "synthetic"),
                               image_size=256, train_batch_size=16, num_workers=workers, train_repeats=4,
                               synthetic={**SYNTHETIC, "image_size": 256})
        dm.setup("fit")
        start, images = time.perf_counter(), 0
        for batch in dm.train_dataloader():
            images += len(batch["image"])
        out[f"workers_{workers}_images_per_s"] = round(images / (time.perf_counter() - start), 1)
    return out


def _plan(args: argparse.Namespace) -> list[tuple[str, Callable[[argparse.Namespace, Path], dict[str, Any]]]]:
    from anobench.config import group_options

    experiments = args.experiments or (["memae_paper"] if args.quick else list(group_options("experiment")))
    ddp_methods = args.ddp_methods or (["memae"] if args.quick else list(DDP_METHODS))
    checks: list[tuple[str, Callable]] = [("environment", check_environment)]
    checks += [(f"experiment:{n}", lambda a, w, n=n: check_experiment(n, a, w)) for n in experiments]
    checks.append(("patch_svdd_precision", check_patch_svdd_precision))
    checks += [(f"ddp:{m}", lambda a, w, m=m: check_ddp(m, a, w)) for m in ddp_methods]
    checks.append(("data_loading", check_data_loading))
    return checks


def _markdown(rows: list[dict[str, Any]]) -> str:
    lines = ["| check | status | s | figures |", "| --- | --- | ---: | --- |"]
    for row in rows:
        figures = row.get("error") or "; ".join(f"{k}: {json.dumps(v)}" for k, v in row.get("result", {}).items())
        figures = " ".join(figures.replace("|", "/").split())
        lines.append(f"| {row['check']} | {row['status']} | {row['seconds']} | {figures} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    parser.add_argument("--quick", action="store_true", help="one experiment, one DDP method, small sizes")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--out", type=Path, default=Path("gpu_check"))
    parser.add_argument("--budget-s", type=float, default=540.0)
    parser.add_argument("--ddp-timeout-s", type=float, default=180.0)
    parser.add_argument("--experiments", nargs="*")
    parser.add_argument("--ddp-methods", nargs="*")
    args = parser.parse_args(argv)
    import torch

    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device is visible (use --device cpu for a dry run)")
    args.out.mkdir(parents=True, exist_ok=True)
    jsonl = args.out / "gpu_check.jsonl"
    jsonl.write_text("")
    rows: list[dict[str, Any]] = []
    began = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="gpu_check_") as tmp:
        for name, check in _plan(args):
            row: dict[str, Any] = {"check": name, "device": args.device}
            if time.perf_counter() - began > args.budget_s:
                row.update(status="skipped", seconds=0, error=f"time budget of {args.budget_s:.0f} s spent")
            else:
                start = time.perf_counter()
                try:
                    row.update(status="ok", result=check(args, Path(tmp)))
                except Exception as error:  # noqa: BLE001 - one failed check must not stop the others
                    row.update(status="failed", error=f"{type(error).__name__}: {error}"[:1000])
                    traceback.print_exc()
                row["seconds"] = round(time.perf_counter() - start, 1)
            rows.append(row)
            with open(jsonl, "a") as handle:
                handle.write(json.dumps(row, default=str) + "\n")
            print(f"{name}: {row['status']} ({row['seconds']} s)", flush=True)
    (args.out / "gpu_check.md").write_text(_markdown(rows))
    print(f"wrote {jsonl} and {args.out / 'gpu_check.md'}")
    return 0 if all(r["status"] == "ok" for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
