"""What a finished suite cost, per method: the measured figures the README's cost table is filled from.

    python scripts/suite_costs.py results/suites/mvtec_paper

reads every run's result.json (timings, peak memory, device, budget) under <suite>/runs/ and prints, per
method: runs (ok/failed), summed training and inference hours, the slowest single run, and the largest
peak GPU memory and process RSS (a process's peak: a worker that ran several jobs reports its largest).
Nothing is estimated: a method without GPU figures shows "—".
"""

from __future__ import annotations

import argparse
import sys
from collections import defaultdict
from pathlib import Path

from anobench.results.leaderboard import collect_results


def summarise(suite_dir: Path) -> list[dict]:
    results, warnings = collect_results(suite_dir)
    for warning in warnings:
        print(f"skipped: {warning}", file=sys.stderr)
    per_method: dict[str, list[dict]] = defaultdict(list)
    for record in results:
        per_method[record["method"]].append(record)
    rows = []
    for method, records in sorted(per_method.items()):
        timings = [r.get("timings") or {} for r in records]
        run_seconds = [t.get("train_s", 0.0) + t.get("inference_s", 0.0) for t in timings]
        gpu = [r["peak_gpu_mb"] for r in records if r.get("peak_gpu_mb") is not None]
        rss = [r["peak_rss_mb"] for r in records if r.get("peak_rss_mb") is not None]
        devices = sorted({(r.get("device") or {}).get("gpu") or (r.get("device") or {}).get("cpu") or "?"
                          for r in records})
        rows.append({
            "method": method, "ok": sum(r["status"] == "ok" for r in records),
            "failed": sum(r["status"] != "ok" for r in records),
            "train_h": sum(t.get("train_s", 0.0) for t in timings) / 3600,
            "inference_h": sum(t.get("inference_s", 0.0) for t in timings) / 3600,
            "slowest_run_h": max(run_seconds, default=0.0) / 3600,
            "peak_gpu_gib": max(gpu) / 1024 if gpu else None,
            "peak_rss_gib": max(rss) / 1024 if rss else None,
            "budgets": sorted({(r.get("budget") or {}).get("label") or "?" for r in records}),
            "devices": devices,
        })
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("suite_dir", type=Path, help="a suite folder (<results>/suites/<name>) or a results folder")
    ns = parser.parse_args(argv)
    if not (ns.suite_dir / "runs").is_dir():
        print(f"error: {ns.suite_dir}/runs: no such folder (give a suite or results folder)", file=sys.stderr)
        return 2
    rows = summarise(ns.suite_dir)

    def gib(value: float | None) -> str:
        return "—" if value is None else f"{value:.2f}"

    print(f"{'method':<22} {'ok':>4} {'fail':>4} {'train h':>8} {'infer h':>8} {'max run h':>9} "
          f"{'GPU GiB':>8} {'RSS GiB':>8}  budget / device")
    for row in rows:
        print(f"{row['method']:<22} {row['ok']:>4} {row['failed']:>4} {row['train_h']:>8.3f} {row['inference_h']:>8.3f} "
              f"{row['slowest_run_h']:>9.3f} {gib(row['peak_gpu_gib']):>8} {gib(row['peak_rss_gib']):>8}  "
              f"{'+'.join(row['budgets'])} / {', '.join(row['devices'])}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
