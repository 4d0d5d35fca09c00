"""Which pooling turns anomaly maps into the best image scores, measured over many runs, not one.

    python scripts/map_pooling.py results/suites/cpu_reduced [more results or suite folders ...] [rows.jsonl ...] [--out rows.csv]
        [--methods uninformed_students synthcp nbs]

Every run's result.json records the image AUROC of each candidate pooling of its maps
(`evaluation.image_auroc_by_pooling`; candidates in anobench/metrics/pooling.py). This script reads the ok
runs under the given folders (and the rows of JSON-lines files such as scripts/nbs_labelled_sets.py --out writes:
method, dataset, category, seed, image_auroc_by_pooling; a run with a labelled set is `<seed>/l<labelled seed>`,
and a run given twice counts once) and prints, per candidate, the mean and the worst image AUROC over all runs,
and how often it is the best of a run (ties share the win), plus one row per run.

The rule the harness applies where a paper defines no image score (`anobench.metrics.pooling.MAP_POOLING`):
the candidate with the highest mean over the runs; a candidate whose mean is within `--tie` (default 0.005)
of the best counts as tied, and among tied candidates the one with the highest worst case wins. The run
set should span methods, categories and seeds (docs/methods.md, "Image scores from maps").
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from anobench.io import atomic_write_csv
from anobench.metrics.pooling import POOLINGS
from anobench.results.leaderboard import collect_results


def run_rows(folders: list[Path]) -> list[dict]:
    """One row per ok run that recorded every candidate: method, dataset, category, seed, AUROC per pooling."""
    rows = []
    for folder in folders:
        if folder.is_file():  # JSON lines of rows
            for line in folder.read_text(encoding="utf-8").splitlines():
                row = json.loads(line)
                pooled = row.get("image_auroc_by_pooling") or {}
                if all(pooled.get(rule) is not None for rule in POOLINGS):
                    seed = _seed_label(row.get("seed"), row.get("labelled_seed"))
                    rows.append({"method": row["method"], "dataset": row.get("dataset"), "category": row.get("category"),
                                 "seed": seed, **{rule: float(pooled[rule]) for rule in POOLINGS}})
            continue
        results, warnings = collect_results(folder)
        for warning in warnings:
            print(f"skipped: {warning}", file=sys.stderr)
        for record in results:
            pooled = (record.get("evaluation") or {}).get("image_auroc_by_pooling") or {}
            if record.get("status") != "ok" or any(pooled.get(rule) is None for rule in POOLINGS):
                continue
            labelled = (((record.get("config") or {}).get("method") or {}).get("module") or {}).get("labelled_seed")
            seed = _seed_label(record.get("seed"), labelled)
            rows.append({"method": record["method"], "dataset": record.get("dataset"),
                         "category": record.get("category"), "seed": seed,
                         **{rule: float(pooled[rule]) for rule in POOLINGS}})
    return _once(rows)


def _seed_label(seed: object, labelled_seed: object) -> object:
    """The run's seed, or `<seed>/l<labelled seed>` for a run with a labelled set (NBS)."""
    return seed if labelled_seed is None else f"{seed}/l{labelled_seed}"


def _once(rows: list[dict]) -> list[dict]:
    """The first row of each (method, dataset, category, seed): a run given twice (a suite's NBS seed 0 is
    labelled set 0, which nbs_labelled_sets.py rows may hold too) counts once."""
    seen, kept = set(), []
    for row in rows:
        key = (row["method"], row["dataset"], row["category"], str(row["seed"]))
        if key not in seen:
            seen.add(key)
            kept.append(row)
    return kept


def choose(rows: list[dict], tie: float = 0.005) -> tuple[str, dict[str, dict[str, float]]]:
    """(the chosen pooling, per-pooling summary: mean, worst, wins) by the rule in the module docstring."""
    if not rows:
        raise ValueError("no run with evaluation.image_auroc_by_pooling found")
    table = np.array([[row[rule] for rule in POOLINGS] for row in rows])
    best = table.max(axis=1, keepdims=True)
    wins = ((table >= best - 1e-12) / (table >= best - 1e-12).sum(axis=1, keepdims=True)).sum(axis=0)
    summary = {rule: {"mean": float(table[:, j].mean()), "worst": float(table[:, j].min()), "wins": float(wins[j])}
               for j, rule in enumerate(POOLINGS)}
    top = max(s["mean"] for s in summary.values())
    tied = [rule for rule in POOLINGS if summary[rule]["mean"] >= top - tie]
    return max(tied, key=lambda rule: summary[rule]["worst"]), summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("folders", nargs="+", type=Path,
                        help="results or suite folders (each with runs/), or JSON-lines files of rows")
    parser.add_argument("--tie", type=float, default=0.005, help="means within this of the best count as tied")
    parser.add_argument("--out", type=Path, help="CSV of the per-run rows (written atomically)")
    parser.add_argument("--methods", nargs="+", help="only these methods' runs (e.g. the ones the rule applies to: "
                        "uninformed_students synthcp nbs)")
    ns = parser.parse_args(argv)
    missing = [str(f) for f in ns.folders if not (f.is_file() or (f / "runs").is_dir())]
    if missing:
        print(f"error: no runs/ folder in {', '.join(missing)} (give suite or results folders, or JSON-lines files)",
              file=sys.stderr)
        return 2
    rows = [row for row in run_rows(ns.folders) if not ns.methods or row["method"] in ns.methods]
    try:
        chosen, summary = choose(rows, ns.tie)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    columns = ["method", "dataset", "category", "seed", *POOLINGS]
    print("| " + " | ".join(columns) + " |")
    print("|" + "---|" * len(columns))
    for row in sorted(rows, key=lambda r: (r["method"], str(r["dataset"]), str(r["category"]), str(r["seed"]))):
        print("| " + " | ".join(f"{row[c]:.3f}" if c in POOLINGS else str(row[c]) for c in columns) + " |")
    print(f"\n{len(rows)} runs | pooling | mean | worst | best of a run (ties shared)")
    for rule in POOLINGS:
        s = summary[rule]
        print(f"{rule:>14} | {s['mean']:.3f} | {s['worst']:.3f} | {s['wins']:.1f}")
    print(f"chosen by the rule (highest mean, ties within {ns.tie} by the best worst case): {chosen}")
    if ns.out:
        atomic_write_csv(ns.out, [{c: row[c] for c in columns} for row in rows])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
