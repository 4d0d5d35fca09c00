"""Patch SVDD speed and memory on this machine: training step, inference, nearest-neighbour search.

    python scripts/bench_patch_svdd.py [--device cpu|cuda] [--bank 680000] [--queries 3249]

Prints the time of one training step (batch 64 and 16 images → one position pair and one SVDD'
pair per K per image, as the official loader; batch 64 also under bf16 autocast, what
trainer.precision=bf16-mixed runs), next to the same step in the official code's call pattern
(eight whole-batch encoder calls, one per loss input, on the same modules: a lower bound of the
official step, whose loader is not counted), the step's FLOPs and the rate they run at against
the rate of the encoder's largest convolution alone (what this CPU's convolutions reach), then
inference time per 256² image (dense embeddings +
exact 1-NN against a bank of a real category's size + maps), and exact / subsampled NN search
time for a bank of a typical MVTec category (209 train images × 57² K=32 patches ≈ 680k × 64;
one test image = 57² = 3249 queries), with peak memory (process max RSS on CPU, CUDA peak on GPU).
Random inputs and weights: the timings do not depend on the values. Runs with malloc_keep_freed as
`anobench train` does (anobench/allocator.py); --malloc-default measures without it.
"""

from __future__ import annotations

import argparse
import resource
import time

import torch
import torch.nn.functional as F

from anobench.allocator import keep_freed_memory
from anobench.methods.patch_svdd import PatchSVDD
from anobench.methods.patch_svdd.nearest import nearest_distances, subsample_bank
from anobench.methods.patch_svdd.sampling import crop_patches, sample_position_pairs, sample_svdd_pairs
from anobench.methods.patch_svdd.torch_model import BIG_K, SMALL_K, EncoderSmall


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


def encoder_gflop(patches: int) -> float:
    """Forward GFLOP of EncoderSmall on `patches` 32×32 patches (2 FLOP per multiply-add)."""
    size, total = SMALL_K, 0
    for conv in EncoderSmall().convs:
        size = (size - conv.kernel_size[0]) // conv.stride[0] + 1
        total += 2 * conv.in_channels * conv.out_channels * conv.kernel_size[0] ** 2 * size * size
    return total * patches / 1e9


def conv_gflops(device: torch.device, repeats: int) -> float:
    """GFLOP/s of the encoder's largest convolution (128→128, 3×3 on 11×11) alone, forward, in calls of 128
    patches as the encoder runs it on CPU: the rate this machine's convolution kernels reach on this network."""
    x = torch.randn(128, 128, 11, 11, device=device)
    weight = torch.randn(128, 128, 3, 3, device=device)
    seconds = _timed(lambda: [F.conv2d(x, weight) for _ in range(10)], device, repeats)
    return 10 * 2 * 128 * 128 * 128 * 9 * 9 * 9 / seconds / 1e9


def official_pattern_step(module: PatchSVDD, x: torch.Tensor, optimizer: torch.optim.Optimizer) -> torch.Tensor:
    """The official main_train.py step on our modules: each loss term calls the encoder on its whole batch of
    first and second patches (eight calls; the K = 64 encoder runs its 4n sub-patches in one call). Draws
    the pairs and noise in our order, so its loss equals ours on the same seed (same work, compared)."""
    n, _, height, width = x.shape
    optimizer.zero_grad()
    encoders = {BIG_K: module.model.encoder, SMALL_K: module.model.encoder_small}
    classifiers = {BIG_K: module.classifier_64, SMALL_K: module.classifier_32}
    loss = x.new_zeros(())
    for k in (BIG_K, SMALL_K):
        encoder = encoders[k]
        c1, c2, labels = sample_position_pairs(n, height, width, k)
        s1, s2 = sample_svdd_pairs(n, height, width, k)
        h1 = encoder(module._perturb(crop_patches(x, c1, k)))
        h2 = encoder(module._perturb(crop_patches(x, c2, k)))
        loss = loss + F.cross_entropy(classifiers[k](h1, h2), labels.to(x.device))
        svdd = (encoder(crop_patches(x, s1, k)) - encoder(crop_patches(x, s2, k))).flatten(1).norm(dim=1).mean()
        loss = loss + module.lambda_svdd * svdd
    loss.backward()
    optimizer.step()
    return loss.detach()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--bank", type=int, default=680_000, help="K=32 bank rows (a real category: ~680k)")
    parser.add_argument("--queries", type=int, default=3249, help="queries per test image (57² for K=32)")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--malloc-default", action="store_true",
                        help="leave glibc's malloc defaults (anobench runs set malloc_keep_freed: true)")
    args = parser.parse_args()
    device = torch.device(args.device)
    torch.manual_seed(0)
    kept = False if args.malloc_default else keep_freed_memory()
    print(f"device={device} torch={torch.__version__} threads={torch.get_num_threads()} malloc_keep_freed={kept}")

    module = PatchSVDD().to(device)
    model = module.model
    model.fit_mean([torch.rand(2, 3, 256, 256, device=device)])
    optimizer = module.configure_optimizers()

    # what training runs: patches cropped from the kept normalised training set (a category's 209 images)
    train_set = model.normalize(torch.rand(209, 3, 256, 256, device=device))
    times = {}
    for batch, bf16 in ((64, False), (64, True), (16, False)):
        index = torch.randint(0, train_set.shape[0], (batch,), device=device)

        def step() -> None:
            optimizer.zero_grad()
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):  # trainer.precision=bf16-mixed
                loss = module.losses_from_normalised(train_set, index)["loss"]
            loss.backward()
            optimizer.step()

        _reset_peak(device)
        seconds = times[batch, bf16] = _timed(step, device, args.repeats)
        kind = "bf16-mixed" if bf16 else "float32"
        print(f"train step, batch {batch:3d}, {kind:10s}: {seconds * 1000:8.0f} ms   ({_peak_mib(device)})")

    official = PatchSVDD(encoder_cpu_chunk=None).to(device)
    official.model.mean_image = model.mean_image
    official_optimizer = official.configure_optimizers()
    x = train_set[:64]
    seconds = _timed(lambda: official_pattern_step(official, x, official_optimizer), device, args.repeats)
    print(f"train step, batch  64, float32, official call pattern: {seconds * 1000:8.0f} ms  "
          f"(ours {seconds / times[64, False]:.2f}x faster in float32, {seconds / times[64, True]:.2f}x in bf16-mixed)")
    # 64 × (4 × 4 sub-patches + 4 patches) = 1280 32×32 encoder inputs; backward ≈ 2 × forward
    gflop = 3 * encoder_gflop(64 * (4 * 4 + 4))
    print(f"  step: {gflop:.0f} GFLOP in the encoder -> ours {gflop / times[64, False]:.0f} GFLOP/s float32; "
          f"the largest conv alone runs at {conv_gflops(device, args.repeats):.0f} GFLOP/s on this machine")

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
