"""The publisher: rebuild everything a results folder shows from its result files, once per verb.

    publish(results_dir) -> Leaderboard

writes <dir>/leaderboard.{md,csv} (results/render.py), the per-metric plots (visualize/plots.py, drawn by the
report) and report.html (visualize/report.py) from <dir>/runs/**/result.json, atomically and under the folder
lock: parallel sweep jobs may publish the same folder at the same time. train, eval, bench and
`anobench leaderboard` all publish through here.
"""

from __future__ import annotations

from pathlib import Path

from anobench.io import atomic_write_text, folder_lock
from anobench.results.leaderboard import Leaderboard, build_leaderboard, collect_results
from anobench.results.render import to_csv, to_markdown
from anobench.visualize.report import REPORT_FILE, write_report

LOCK_FILE = ".leaderboard.lock"
RUNS_SOURCE = "runs/"


def publish(results_dir: str | Path) -> Leaderboard:
    """Rebuild results_dir/leaderboard.{md,csv}, the plots and report.html from results_dir/runs/**/result.json.

    The tables are always written; a failure to write the report (a convenience page) is printed as a
    warning and does not fail the verb."""
    results_dir = Path(results_dir)
    with folder_lock(results_dir, LOCK_FILE):
        results, warnings = collect_results(results_dir)
        for record in results:  # the runs table names each result file relative to the folder
            record["_rel_path"] = str(Path(record["_path"]).relative_to(results_dir))
        board = build_leaderboard(results, warnings=warnings)
        atomic_write_text(results_dir / "leaderboard.csv", to_csv(board))
        atomic_write_text(results_dir / "leaderboard.md", to_markdown(board, source=RUNS_SOURCE))
        try:  # keep report.html (linked from leaderboard.md) and its plots in step with the tables
            write_report(results_dir, results=results, warnings=warnings, board=board)
        except Exception as error:  # noqa: BLE001 - the tables are written; the page is a convenience
            print(f"warning: could not write {results_dir / REPORT_FILE}: {type(error).__name__}: {error}")
    return board
