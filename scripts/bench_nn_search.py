"""Patch SVDD's 1-NN searches on one trained run: inference time and metrics per search, vs exact.

    python scripts/bench_nn_search.py RUN_DIR [--searches exact ivf hnsw] [--work DIR] [--collect-only]
        [-- +overrides.method.module.nn_nprobe=16 ...]

RUN_DIR is a finished `anobench train method=patch_svdd ...` run (its checkpoints/last.ckpt and config,
e.g. on real MVTec AD bottle). For each search the same weights are re-tested with
`anobench eval checkpoint=RUN_DIR/checkpoints/last.ckpt +overrides.method.module.nn_search=<search>` into
WORK/<search>/ (default RUN_DIR/nn_search/), one after the other so the timings do not share the cores; then
one row per search is printed: inference seconds (banks + test images + search, from result.json), image /
pixel AUROC and PRO, and their differences from the exact search. --collect-only prints the table from
result files already in WORK. This is the benchmark behind issue 17's "approximate <= 60 s within 0.005 AUROC
of exact" (figures in anobench/methods/patch_svdd/README.md); the machine and its load decide the seconds.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

SEARCHES = ("exact", "ivf", "hnsw", "torch")
METRICS = ("image_auroc", "pixel_auroc", "pro")


def run_eval(run_dir: Path, search: str, out_dir: Path, overrides: list[str]) -> None:
    """Re-test the run's weights with one search, through the CLI (the code path users run)."""
    command = [sys.executable, "-m", "anobench", "eval", f"checkpoint={run_dir / 'checkpoints' / 'last.ckpt'}",
               f"+overrides.method.module.nn_search={search}", f"hydra.run.dir={out_dir}", *overrides]
    proc = subprocess.run(command, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"bench_nn_search: `anobench eval` with nn_search={search} failed:\n{proc.stderr[-2000:]}")


def read_row(work: Path, search: str) -> dict:
    """The figures of WORK/<search>/result.json; a missing or failed result names the file."""
    path = work / search / "result.json"
    if not path.is_file():
        raise SystemExit(f"bench_nn_search: no result for nn_search={search}: {path} does not exist")
    record = json.loads(path.read_text())
    if record.get("status") != "ok":
        raise SystemExit(f"bench_nn_search: {path} has status {record.get('status')!r}, expected 'ok'")
    searched = (record.get("evaluation") or {}).get("nearest_neighbour", {})
    if searched.get("search") != search:
        raise SystemExit(f"bench_nn_search: {path} was tested with nn_search={searched.get('search')!r}, not {search}")
    metrics = record["metrics"]
    return {"search": search, "inference_s": record["timings"]["inference_s"], **{m: metrics[m] for m in METRICS},
            "params": {k: v for k, v in searched.items() if k in ("nlist", "nprobe", "hnsw_m", "ef_search")}}


def table(rows: list[dict]) -> str:
    """Markdown table; differences are against the exact row when there is one."""
    exact = next((r for r in rows if r["search"] == "exact"), None)
    lines = ["| search | inference s | image AUROC | pixel AUROC | PRO | vs exact (image / pixel / PRO) |",
             "| --- | ---: | ---: | ---: | ---: | --- |"]
    for r in rows:
        delta = " / ".join(f"{r[m] - exact[m]:+.4f}" for m in METRICS) if exact else "n/a"
        params = ", ".join(f"{k} {v}" for k, v in r["params"].items())
        name = f"{r['search']} ({params})" if params else r["search"]
        lines.append(f"| {name} | {r['inference_s']:.1f} | {r['image_auroc']:.4f} | {r['pixel_auroc']:.4f} | "
                     f"{r['pro']:.4f} | {delta} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dir", type=Path, help="a finished patch_svdd run folder")
    parser.add_argument("--searches", nargs="+", default=["exact", "ivf", "hnsw"], choices=SEARCHES)
    parser.add_argument("--work", type=Path, help="where the re-tests go (default RUN_DIR/nn_search)")
    parser.add_argument("--collect-only", action="store_true", help="only print the table of results in WORK")
    parser.add_argument("overrides", nargs="*", help="more `anobench eval` overrides, e.g. +overrides.method.module.nn_nprobe=16")
    args = parser.parse_args()
    work = args.work or args.run_dir / "nn_search"
    if not args.collect_only:
        config = args.run_dir / "config.yaml"
        checkpoint = args.run_dir / "checkpoints" / "last.ckpt"
        for path in (config, checkpoint):
            if not path.is_file():
                parser.error(f"{path} does not exist: RUN_DIR must be a finished `anobench train` run")
        from omegaconf import OmegaConf

        method = OmegaConf.select(OmegaConf.load(config), "method.name")
        if method != "patch_svdd":
            parser.error(f"{config}: the run is method={method}, not patch_svdd; only Patch SVDD has nn_search")
        for search in args.searches:
            print(f"nn_search={search} ...", flush=True)
            run_eval(args.run_dir, search, work / search, args.overrides)
    print(table([read_row(work, s) for s in args.searches]))


if __name__ == "__main__":
    main()
