"""Rebuild everything a results folder shows from its result files: leaderboard.{md,csv}, the per-metric
plots and report.html. The one entry point for train, eval, bench and `anobench leaderboard`, so that
results/leaderboard.py (tables) and visualize/report.py (the page) need not import each other."""

from __future__ import annotations

from pathlib import Path

from anobench.io import folder_lock
from anobench.results.leaderboard import Leaderboard, collect_results, write_tables


def write_leaderboard(results_dir: str | Path) -> Leaderboard:
    """Rebuild results_dir/leaderboard.{md,csv} and report.html from results_dir/runs/**/result.json,
    atomically and under a lock (parallel sweep jobs may rebuild at the same time)."""
    from anobench.visualize.report import write_report

    results_dir = Path(results_dir)
    with folder_lock(results_dir, ".leaderboard.lock"):
        results, warnings = collect_results(results_dir)
        board = write_tables(results_dir, results, warnings)
        try:  # keep report.html (linked from leaderboard.md) in step with the tables
            write_report(results_dir, results=results, warnings=warnings, board=board)
        except Exception as error:  # noqa: BLE001 - the tables are written; the page is a convenience
            print(f"warning: could not write {results_dir / 'report.html'}: {type(error).__name__}: {error}")
    return board
