"""Patch SVDD speed and memory on this machine: training step, inference, nearest-neighbour search.

    python scripts/bench_patch_svdd.py [--device cpu|cuda] [--bank 680000] [--queries 3249]

Prints the time of one training step (batch 64 and 16 images → one position pair and one SVDD'
pair per K per image, as the official loader; batch 64 also under bf16 autocast, what
trainer.precision=bf16-mixed runs), inference time per 256² image (dense embeddings +
exact 1-NN against a bank of a real category's size + maps), and exact / subsampled NN search
time for a bank of a typical MVTec category (209 train images × 57² K=32 patches ≈ 680k × 64;
one test image = 57² = 3249 queries), with peak memory (process max RSS on CPU, CUDA peak on GPU).
Random inputs and weights: the timings do not depend on the values.
"""

from __future__ import annotations

import argparse
import resource
import time

import torch

from anobench.methods.patch_svdd import PatchSVDD
from anobench.methods.patch_svdd.nearest import nearest_distances, subsample_bank


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def _peak_mib(device: torch.device) -> str:
    if device.type == "cuda":
        return f"cuda peak {torch.cuda.max_memory_allocated() / 2**20:.0f} MiB"
    return f"max RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB"


def _reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()


def _timed(fn, device: torch.device, repeats: int) -> float:
    fn()  # warm-up
    _sync(device)
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    _sync(device)
    return (time.perf_counter() - start) / repeats


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--bank", type=int, default=680_000, help="K=32 bank rows (a real category: ~680k)")
    parser.add_argument("--queries", type=int, default=3249, help="queries per test image (57² for K=32)")
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    device = torch.device(args.device)
    torch.manual_seed(0)
    print(f"device={device} torch={torch.__version__} threads={torch.get_num_threads()}")

    module = PatchSVDD().to(device)
    model = module.model
    model.fit_mean([torch.rand(2, 3, 256, 256, device=device)])
    optimizer = module.configure_optimizers()

    for batch, bf16 in ((64, False), (64, True), (16, False)):
        images = torch.rand(batch, 3, 256, 256, device=device)

        def step() -> None:
            optimizer.zero_grad()
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):  # trainer.precision=bf16-mixed
                loss = module.compute_losses(images)["loss"]
            loss.backward()
            optimizer.step()

        _reset_peak(device)
        seconds = _timed(step, device, args.repeats)
        kind = "bf16-mixed" if bf16 else "float32"
        print(f"train step, batch {batch:3d}, {kind:10s}: {seconds * 1000:8.0f} ms   ({_peak_mib(device)})")

    # banks of a real category's size (random tanh vectors); K=64: 209 × 13² ≈ 35k
    gen = torch.Generator().manual_seed(0)
    model.bank_32 = torch.tanh(torch.randn(args.bank, 64, generator=gen)).to(device)
    model.bank_64 = torch.tanh(torch.randn(args.bank * 169 // 3249, 64, generator=gen)).to(device)
    model.eval()
    for batch in (1, 8):
        images = torch.rand(batch, 3, 256, 256, device=device)
        _reset_peak(device)
        seconds = _timed(lambda: model(images), device, 1)
        print(
            f"inference, batch {batch}: {seconds / batch * 1000:8.0f} ms / image "
            f"(bank {args.bank} + {model.bank_64.shape[0]})   ({_peak_mib(device)})"
        )
        with torch.no_grad():
            dense = _timed(lambda: model.dense_embeddings(model.normalize(images)), device, 1)
        print(f"  of which dense embeddings: {dense / batch * 1000:8.0f} ms / image")

    queries = torch.tanh(torch.randn(args.queries, 64, generator=gen)).to(device)
    bank = model.bank_32
    for chunk, block in ((4096, None), (1024, None), (4096, 4096 * 4096)):
        _reset_peak(device)
        seconds = _timed(
            lambda: nearest_distances(queries, bank, chunk_size=chunk, block_elements=block), device, 1
        )
        print(
            f"exact NN {args.queries} queries × {args.bank} bank, chunk {chunk:5d}, "
            f"block {'default' if block is None else block}: {seconds * 1000:8.0f} ms   ({_peak_mib(device)})"
        )
    exact = nearest_distances(queries, bank)
    for fraction in (0.25, 0.1):
        sub = subsample_bank(bank, fraction)
        seconds = _timed(lambda: nearest_distances(queries, sub), device, 1)
        approx = nearest_distances(queries, sub)
        print(
            f"subsampled NN (bank_subsample={fraction}): {seconds * 1000:8.0f} ms, "
            f"mean distance +{(approx - exact).mean().item() / exact.mean().item() * 100:.1f}% vs exact"
        )


if __name__ == "__main__":
    main()
