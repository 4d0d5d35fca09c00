"""Which differences between methods in a multi-seed suite are larger than the spread between seeds.

    python scripts/seed_spread.py results/suites/cpu_reduced [--metrics image_auroc pixel_auroc pro] [--k 2]

Reads the ok runs under <folder>/runs (the leaderboard's own aggregation: the newest run per seed, maps at
ground-truth resolution) and prints, per category and metric, every method's mean ± sample std over seeds,
[min, max] and n, then every pair of methods with at least two seeds each. A pair is *separated* when

    |mean_a - mean_b| > k * sqrt(std_a**2 + std_b**2)        (k = 2 by default)

that is, when the gap between the means is more than k standard deviations of the difference between one run
of each: a single-seed comparison would order the two methods the same way in about 19 of 20 repeats (under
a normal spread). With three seeds a std is itself uncertain, so a pair near the line is reported as not
separated rather than ranked. Columns with semi-supervised runs keep their leaderboard label.
"""

from __future__ import annotations

import argparse
import itertools
import math
import sys
from pathlib import Path

from anobench.results.leaderboard import build_leaderboard, collect_results
from anobench.results.record import METRIC_KEYS


def spread_rows(folder: Path, metrics: tuple[str, ...] = METRIC_KEYS) -> list[dict]:
    """One row per (dataset, category, metric, method): mean, std, min, max, n over the ok seeds."""
    results, warnings = collect_results(folder)
    for warning in warnings:
        print(f"skipped: {warning}", file=sys.stderr)
    board = build_leaderboard(results, warnings=warnings, metrics=list(metrics))
    rows = []
    for row, method, metric, cell in board.category_cells():
        values = [v for v in cell.values if v is not None and not math.isnan(v)]
        if values:
            rows.append({"dataset": row["dataset"], "category": row["category"], "metric": metric,
                         "method": method, "mean": cell.mean, "std": cell.std, "n": len(values),
                         "min": min(values), "max": max(values)})
    return rows


def pairs(rows: list[dict], k: float = 2.0) -> list[dict]:
    """Every pair of methods (at least two seeds each) in the same (dataset, category, metric), better first,
    with the gap, the threshold k * sqrt(std_a^2 + std_b^2) and whether the gap exceeds it."""
    out = []
    groups: dict[tuple, list[dict]] = {}
    for row in rows:
        if row["n"] >= 2:
            groups.setdefault((row["dataset"], row["category"], row["metric"]), []).append(row)
    for (dataset, category, metric), members in groups.items():
        members = sorted(members, key=lambda r: -r["mean"])
        for a, b in itertools.combinations(members, 2):
            threshold = k * math.sqrt(a["std"] ** 2 + b["std"] ** 2)
            gap = a["mean"] - b["mean"]
            out.append({"dataset": dataset, "category": category, "metric": metric, "better": a["method"],
                        "worse": b["method"], "gap": gap, "threshold": threshold, "separated": gap > threshold})
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("folder", type=Path, help="a suite or results folder with runs/")
    parser.add_argument("--metrics", nargs="+", default=list(METRIC_KEYS), help="metric keys (default: the three main)")
    parser.add_argument("--k", type=float, default=2.0, help="separated when the gap exceeds k std of a run-vs-run difference")
    ns = parser.parse_args(argv)
    if not (ns.folder / "runs").is_dir():
        print(f"error: no runs/ folder in {ns.folder} (give a suite or results folder)", file=sys.stderr)
        return 2
    rows = spread_rows(ns.folder, tuple(ns.metrics))
    if not rows:
        print(f"error: no ok run with {', '.join(ns.metrics)} under {ns.folder / 'runs'}", file=sys.stderr)
        return 1
    print("| dataset | category | metric | method | mean ± std | [min, max] | n |\n|---|---|---|---|---|---|---|")
    for r in sorted(rows, key=lambda r: (r["dataset"], r["category"], ns.metrics.index(r["metric"]), -r["mean"])):
        std = f"{r['std']:.3f}" if r["std"] is not None else "-"
        print(f"| {r['dataset']} | {r['category']} | {r['metric']} | {r['method']} | {r['mean']:.3f} ± {std} "
              f"| [{r['min']:.3f}, {r['max']:.3f}] | {r['n']} |")
    found = pairs(rows, ns.k)
    print(f"\npairs (separated: gap > {ns.k:g} * sqrt(std_a^2 + std_b^2))")
    for p in sorted(found, key=lambda p: (p["dataset"], p["category"], ns.metrics.index(p["metric"]), -p["gap"])):
        verdict = "separated" if p["separated"] else "within the seed spread"
        print(f"{p['dataset']}/{p['category']} {p['metric']}: {p['better']} > {p['worse']} by {p['gap']:.3f} "
              f"(threshold {p['threshold']:.3f}): {verdict}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
