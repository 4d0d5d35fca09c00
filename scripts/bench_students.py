"""Uninformed Students: one fused pass over the student ensemble vs one call per student.

    python scripts/bench_students.py [--device cpu|cuda] [--size 128] [--batch 4] [--students 3]
                                     [--patch-sizes 17 33] [--width 0.125] [--repeats 5]

Prints, per receptive field, the median time of a training step (dense forward of every student on a
batch, the regression loss, backward) and of an inference pass (forward only) for both ways, with the
largest difference between their outputs. Random weights and images: the timings do not depend on them.
Defaults are conf/method/uninformed_students.yaml's CPU settings.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from anobench.methods.uninformed_students.torch_model import PatchNet, ensemble_dense


def _time(fn, device: torch.device, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--students", type=int, default=3)
    parser.add_argument("--patch-sizes", type=int, nargs="+", default=[17, 33])
    parser.add_argument("--descriptor-dim", type=int, default=128)
    parser.add_argument("--width", type=float, default=0.125)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    device = torch.device(args.device)
    torch.manual_seed(0)
    images = torch.randn(args.batch, 3, args.size, args.size, device=device)
    print(f"device {device}, torch threads {torch.get_num_threads()}, batch {args.batch}×3×{args.size}², "
          f"M = {args.students}, d = {args.descriptor_dim}, width {args.width}")
    print(f"{'p':>3} {'train loop s':>13} {'train fused s':>14} {'speed-up':>9} {'infer loop s':>13} "
          f"{'infer fused s':>14} {'speed-up':>9} {'max |diff|':>11}")
    for p in args.patch_sizes:
        students = torch.nn.ModuleList(PatchNet(p, args.descriptor_dim, args.width)
                                       for _ in range(args.students)).to(device)
        target = torch.randn(args.batch, args.descriptor_dim, args.size, args.size, device=device)

        def loop() -> torch.Tensor:
            return torch.stack([s.dense(images) for s in students])

        def fused() -> torch.Tensor:
            return ensemble_dense(students, images)

        def step(forward) -> None:
            students.zero_grad()
            (forward() - target).pow(2).sum(dim=2).mean().backward()

        train_loop, train_fused = (_time(lambda f=f: step(f), device, args.repeats) for f in (loop, fused))
        with torch.no_grad():
            infer_loop, infer_fused = (_time(f, device, args.repeats) for f in (loop, fused))
            diff = (loop() - fused()).abs().max().item()
        print(f"{p:>3} {train_loop:>13.3f} {train_fused:>14.3f} {train_loop / train_fused:>8.2f}x "
              f"{infer_loop:>13.3f} {infer_fused:>14.3f} {infer_loop / infer_fused:>8.2f}x {diff:>11.2e}")


if __name__ == "__main__":
    main()
