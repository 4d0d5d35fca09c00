"""`anobench reproduce`: the verb around the checks of anobench/results/reproduce.py (ours vs the papers) and
anobench/results/expected.py (a suite vs its stored expected ranges): argument parsing, target resolution,
the console tables and the exit codes (0 pass, 1 failures listed, 2 bad input). `--category NAME` narrows the
paper check to the categories a machine can run (e.g. bottle from the authors' released weights).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from anobench.config import SUITES_FOLDER, default_results_dir, suite_options
from anobench.results.expected import (DEFAULT_MARGIN, RangeRow, check_expected, load_expected_document,
                                       torch_threads, write_expected)
from anobench.results.leaderboard import MEAN_ROWS, METRIC_TITLES
from anobench.results.render import format_value
from anobench.results.reproduce import (
    FAILED,
    MISSING,
    NO_REFERENCE,
    NOT_PAPER_BUDGET,
    OK,
    OUTSIDE,
    CheckRow,
    Report,
    ReproductionInputError,
    check_reproduction,
    describe,
)


NONE = "—"  # how the command shows a missing number


def _count(items: list) -> str:
    return f"{len(items)} categor{'y' if len(items) == 1 else 'ies'}"


def print_report(report: Report) -> None:
    """A rich table of ours vs paper with status; "no reference" cells collapse to one row per method/metric."""
    from rich.console import Console
    from rich.table import Table

    styles = {OK: "green", OUTSIDE: "bold red", MISSING: "red", FAILED: "red", NOT_PAPER_BUDGET: "yellow",
              NO_REFERENCE: "dim"}
    table = Table(title="anobench reproduce: ours vs paper")
    for name, justify in (("method", "left"), ("dataset", "left"), ("category", "left"), ("metric", "left"),
                          ("ours", "right"), ("paper", "right"), ("Δ", "right"), ("tolerance", "right"),
                          ("status", "left"), ("note", "left")):
        table.add_column(name, justify=justify)
    collapsed: dict[tuple[str, str, str], list[CheckRow]] = {}
    unrun: dict[tuple[str, str], list[str]] = {}
    for row in report.rows:
        if row.status == NO_REFERENCE:
            collapsed.setdefault((row.method, row.dataset, row.metric), []).append(row)
            continue
        if row.unrun:
            unrun.setdefault((row.method, row.dataset), []).append(row.category)
            continue
        ours = format_value(row.ours, missing=NONE)
        if row.std is not None:
            ours += f" ± {format_value(row.std)}"
        if row.n_seeds > 1 and row.category != MEAN_ROWS[0]:
            ours += f" ({row.n_seeds} seeds)"
        tolerance = "" if row.tolerance is None else f"±{format_value(row.tolerance)}"
        table.add_row(row.method, row.dataset, row.category, METRIC_TITLES.get(row.metric, row.metric), ours,
                      format_value(row.paper, missing=NONE), format_value(row.delta, signed=True), tolerance,
                      f"[{styles[row.status]}]{row.status}[/]", row.note)
    for (method, dataset), categories in unrun.items():
        names = list(dict.fromkeys(categories))
        table.add_row(method, dataset, _count(names), "all", NONE, "", "", "", f"[{styles[MISSING]}]{MISSING}[/]",
                      "no run of " + ", ".join(names))
    for (method, dataset, metric), group in collapsed.items():
        values = [r.ours for r in group if r.ours is not None]
        ours = f"{format_value(sum(values) / len(values))} (mean)" if values else NONE
        table.add_row(method, dataset, _count(group),
                      METRIC_TITLES.get(metric, metric), ours, NONE, "", "", f"[dim]{NO_REFERENCE}[/]",
                      group[0].note)
    console = Console()
    console.print(table)
    for warning in report.warnings:
        Console(stderr=True).print(f"[yellow]skipped:[/] {warning}")


def resolve_target(target: str, results_dir: str | Path) -> Path:
    """An existing folder as given; else a suite name -> <results_dir>/suites/<name> (`anobench bench`'s layout)."""
    path = Path(target)
    if path.is_dir():
        return path
    if target in suite_options():
        suite_dir = Path(results_dir) / SUITES_FOLDER / target
        if not suite_dir.is_dir():
            raise ReproductionInputError(f"suite {target}: no results yet in {suite_dir} "
                                         f"(run `anobench bench suite={target}` first, or pass --results-dir)")
        return suite_dir
    return path


def only_categories(report: Report, categories: list[str]) -> Report:
    """The report's rows of these categories only (mean rows dropped: a mean over other categories)."""
    wanted = set(categories)
    return Report(rows=[r for r in report.rows if r.category in wanted], allow_reduced=report.allow_reduced,
                  warnings=report.warnings, n_runs=report.n_runs)


def reproduce_command(args: list[str]) -> int:
    """`anobench reproduce --check DIR [--allow-reduced]`: 0 all within tolerance, 1 failures listed, 2 bad input.
    `--check SUITE --expected` / `--write-expected SUITE`: a suite vs its stored expected ranges."""
    parser = argparse.ArgumentParser(
        prog="anobench reproduce",
        description="Compare a results folder with the paper numbers (anobench/results/paper_numbers.yaml): "
                    "exit 0 if every category with a paper number is within tolerance, 1 listing every one that "
                    "is not (outside, missing, failed, not the paper's budget), 2 on bad input.")
    action = parser.add_mutually_exclusive_group(required=True)
    action.add_argument("--check", metavar="SUITE_OR_DIR",
                        help="a suite name (its folder <results-dir>/suites/<name>, as `anobench bench` writes it), "
                             "a results folder (<dir>/runs/**/result.json) or any folder with result files below it")
    parser.add_argument("--results-dir", default=str(default_results_dir()),
                        help="where suites live (default: $ANOBENCH_RESULTS_DIR or outputs; the committed ones: results)")
    parser.add_argument("--category", action="append", default=None, metavar="NAME",
                        help="check only these categories (repeatable; no mean rows): e.g. the categories whose data "
                             "and released weights a machine has (`--check DIR --category bottle`)")
    parser.add_argument("--allow-reduced", action="store_true",
                        help="list runs not trained with the paper's budget as 'not paper budget' without failing; "
                             "they are never counted as reproductions")
    action.add_argument("--write-expected", metavar="SUITE",
                        help="store the suite's current numbers (>= 3 seeds) as its expected ranges "
                             "(anobench/results/expected/<suite>.yaml: mean over seeds ± 4 pooled seed stds + --margin)")
    parser.add_argument("--expected", action="store_true",
                        help="with --check <suite>: compare with the suite's stored expected ranges instead of the "
                             "papers (a regression check for the synthetic suite)")
    parser.add_argument("--margin", type=float, default=None, help="with --write-expected: added to every range's half-width")
    ns = parser.parse_args(args)
    if ns.write_expected or ns.expected:
        return _expected_command(ns)
    report = check_reproduction(resolve_target(ns.check, ns.results_dir), allow_reduced=ns.allow_reduced)
    if ns.category:
        report = only_categories(report, ns.category)
    print_report(report)
    compared = report.count(OK) + report.count(OUTSIDE)
    print(f"{report.n_runs} run(s); {report.count(OK)} of {compared} compared cell(s) within tolerance; "
          f"{report.count(MISSING)} missing, {report.count(FAILED)} failed, "
          f"{report.count(NOT_PAPER_BUDGET)} not paper budget (not a reproduction), "
          f"{report.count(NO_REFERENCE)} with no reference (no paper number: not checked)")
    if report.passed:
        if not compared:
            print("nothing was compared with a paper number: no reproduction is shown by this folder")
        else:
            print("reproduction check passed")
        return 0
    print(f"reproduction check FAILED: {len(report.failures)} cell(s):", file=sys.stderr)
    unrun: dict[tuple[str, str], list[str]] = {}
    for row in report.failures:
        if row.unrun:
            unrun.setdefault((row.method, row.dataset), []).append(row.category)
        else:
            print(f"  {describe(row)}", file=sys.stderr)
    for (method, dataset), categories in unrun.items():
        names = list(dict.fromkeys(categories))
        print(f"  {method} {dataset}: missing, no run of {_count(names)} the paper reports: {', '.join(names)}",
              file=sys.stderr)
    if any(r.status == NOT_PAPER_BUDGET for r in report.failures):
        print("  (runs not trained with budget label 'paper' are not reproductions; pass --allow-reduced to "
              "list them without failing)", file=sys.stderr)
    return 1


def _suite_of(target: str, results_dir: str | Path) -> tuple[str, Path]:
    """(suite name, suite folder) for a suite name or a suite folder (<results>/suites/<name>)."""
    folder = resolve_target(target, results_dir)
    if not folder.is_dir():
        raise ReproductionInputError(f"{target}: neither a suite with results nor a folder")
    return (target if not Path(target).is_dir() else folder.resolve().name), folder


def _range_text(row: RangeRow) -> str:
    """An expected-range row's [low, high], or — where the suite stores no range for the cell."""
    return NONE if row.low is None else f"[{format_value(row.low)}, {format_value(row.high)}]"


def _expected_command(ns: argparse.Namespace) -> int:
    if ns.write_expected:
        suite, folder = _suite_of(ns.write_expected, ns.results_dir)
        path = write_expected(suite, folder, margin=DEFAULT_MARGIN if ns.margin is None else ns.margin)
        print(f"wrote {path} from {folder}; review the diff and commit it")
        return 0
    suite, folder = _suite_of(ns.check, ns.results_dir)
    rows = check_expected(suite, folder)
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"anobench reproduce: suite {suite} vs its expected ranges")
    for name in ("method", "category", "metric", "ours", "expected range", "status", "note"):
        table.add_column(name)
    for row in rows:
        style = "green" if row.status == "ok" else "bold red"
        table.add_row(row.method, f"{row.dataset}/{row.category}", METRIC_TITLES.get(row.metric, row.metric),
                      format_value(row.ours, missing=NONE), _range_text(row),
                      f"[{style}]{row.status}[/]", row.note)
    Console().print(table)
    bad = [r for r in rows if r.status != "ok"]
    print(f"{len(rows) - len(bad)} of {len(rows)} cell(s) within their expected range")
    if not bad:
        return 0
    print(f"expected-range check FAILED: {len(bad)} cell(s):", file=sys.stderr)
    for row in bad:
        print(f"  {row.method} {row.dataset}/{row.category} {METRIC_TITLES.get(row.metric, row.metric)}: "
              f"ours {format_value(row.ours, missing=NONE)}, expected "
              f"{_range_text(row)} — {row.status} ({row.note})",
              file=sys.stderr)
    stored = (load_expected_document(suite).get("generated") or {}).get("torch_threads")
    used = torch_threads(folder) if stored else None
    if stored and used != stored:
        print(f"  note: these runs used {used} torch thread(s), the expected ranges {stored}; "
              "the thread count changes float reduction order and, at this budget, the numbers "
              "(run the suite with OMP_NUM_THREADS=1)", file=sys.stderr)
    print("  (if the change is meant to move these numbers: anobench reproduce --write-expected "
          f"{suite}, review and commit the diff)", file=sys.stderr)
    return 1
