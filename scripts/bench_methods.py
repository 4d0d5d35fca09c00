"""Training and inference speed and peak memory of every method, on real-size input.

    python scripts/bench_methods.py [--methods memae mnad ...] [--device cpu|cuda] [--steps 6]
                                    [--data synthetic/washer] [--override key=value ...]

Each method runs in its own spawned process (so peak memory is its own) through the normal config
path — `conf/method/<name>.yaml` at its default input size (256×256 unless the method says otherwise),
the given data, a Lightning fit of `--steps` steps and a full test pass. A callback times every
training batch (the first is a warm-up and is excluded) and every test batch (the model's forward only;
the shared metrics are not included; `prepare_inference` — memory banks, statistics — is reported
separately). Peak memory is the process's max RSS on CPU, torch's CUDA peak on GPU.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import resource
import tempfile
import time
from pathlib import Path


def _measure(method: str, device: str, steps: int, data: str, data_dir: str | None, overrides: list[str],
             queue) -> None:
    import lightning as L
    import torch
    from hydra import compose, initialize_config_dir

    from anobench.config import config_dir
    from anobench.tasks import run

    class Timer(L.Callback):
        def __init__(self) -> None:
            self.train: list[tuple[float, int]] = []
            self.test: list[tuple[float, int]] = []
            self.prepare_s = 0.0

        def _sync(self) -> None:
            if device == "cuda":
                torch.cuda.synchronize()

        def on_train_batch_start(self, trainer, module, batch, batch_idx) -> None:
            self._sync()
            self._t0 = time.perf_counter()

        def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
            self._sync()
            self.train.append((time.perf_counter() - self._t0, len(batch["index"])))  # Patch SVDD: indices only

        def on_test_batch_start(self, trainer, module, batch, batch_idx, dataloader_idx=0) -> None:
            self._sync()
            self._t0 = time.perf_counter()
            if not self.test:  # the module's on_test_start (prepare_inference) ran since trainer.test began
                self.prepare_s = self._t0 - self._test_start

        def on_test_batch_end(self, trainer, module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
            self._sync()
            self.test.append((time.perf_counter() - self._t0, len(batch["image"])))

    with tempfile.TemporaryDirectory() as tmp, initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        cfg = compose(config_name="train", overrides=[
            f"method={method}", f"data={data}", f"paths.data_dir={data_dir or Path(tmp) / 'data'}",
            f"paths.results_dir={Path(tmp) / 'results'}", *overrides])
        built = run.build(cfg)
        datamodule, module = built.datamodule, built.module
        timer = Timer()
        trainer = L.Trainer(accelerator=device, devices=1, max_steps=steps, max_epochs=-1, logger=False,
                            enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                            num_sanity_val_steps=0, callbacks=[timer])
        trainer.fit(module, datamodule=datamodule)
        if device == "cuda":
            torch.cuda.reset_peak_memory_stats()
        timer._test_start = time.perf_counter()
        trainer.test(module, datamodule=datamodule, verbose=False)
        train = timer.train[1:] or timer.train
        if device == "cuda":
            peak = f"cuda peak {torch.cuda.max_memory_allocated() / 2**20:.0f} MiB"
        else:
            peak = f"max RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB"
        queue.put({
            "method": method,
            "image_size": cfg.method.input.image_size,
            "train_ips": sum(n for _, n in train) / sum(t for t, _ in train),
            "train_batch": train[0][1],
            "infer_ips": sum(n for _, n in timer.test) / sum(t for t, _ in timer.test),
            "prepare_s": timer.prepare_s,
            "peak": peak,
        })


def main() -> None:
    from anobench.methods import list_methods

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--methods", nargs="*", default=None, help="default: every registered method")
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    parser.add_argument("--steps", type=int, default=6, help="training steps (the first is a warm-up)")
    parser.add_argument("--data", default="synthetic/washer")
    parser.add_argument("--data-dir", default=None,
                        help="where synthetic data (and cached teachers) live; default: a new temp folder per method")
    parser.add_argument("--override", nargs="*", default=[], help="extra Hydra overrides for every method")
    args = parser.parse_args()
    if args.device is None:
        import torch

        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    methods = args.methods or list_methods()
    ctx = mp.get_context("spawn")
    print(f"device={args.device} data={args.data} steps={args.steps} overrides={args.override}")
    print(f"{'method':22s} {'size':>5s} {'batch':>5s} {'train img/s':>12s} {'infer img/s':>12s} "
          f"{'prepare s':>10s}  peak memory")
    for method in methods:
        queue = ctx.Queue()
        proc = ctx.Process(target=_measure,
                           args=(method, args.device, args.steps, args.data, args.data_dir, args.override, queue))
        proc.start()
        proc.join()
        if proc.exitcode != 0 or queue.empty():
            print(f"{method:22s} FAILED (exit code {proc.exitcode})")
            continue
        r = queue.get()
        print(f"{r['method']:22s} {r['image_size']:5d} {r['train_batch']:5d} {r['train_ips']:12.2f} "
              f"{r['infer_ips']:12.2f} {r['prepare_s']:10.1f}  {r['peak']}")


if __name__ == "__main__":
    main()
