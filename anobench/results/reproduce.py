"""Reproduction check: our numbers against the paper's, with the tolerances stored in paper_numbers.yaml.

Our value for a (method, category, metric) is exactly the leaderboard's cell (same result selection:
ground-truth-resolution results, newest result per seed, mean over seeds), so the check and the leaderboard
can never disagree about what "ours" is. Each compared cell gets one status:

- ``ok`` / ``outside``: a paper-budget value within / outside the tolerance of the paper's number;
- ``missing``: the paper has a number for a method we ran, but we have no value for that category;
- ``failed``: every run of that cell failed;
- ``not paper budget``: our value was not (only) trained with budget label ``paper``. Such a value is never
  a reproduction: it fails the check unless ``allow_reduced`` is set, and then it is still listed, never
  counted as a pass;
- ``no reference``: the paper reports no number for this method/dataset/metric. Listed, neither a pass nor
  a failure.

Besides the categories, the mean over categories (the leaderboard's ``Mean`` row: paper mean over the same
categories) is checked against the tighter ``tolerance.mean`` width when at least two categories have a value.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from anobench.config import SUITES_FOLDER, default_results_dir, suite_options
from anobench.errors import AnobenchError
from anobench.results.leaderboard import (
    METRIC_TITLES,
    MEAN_ROWS,
    Cell,
    build_leaderboard,
    category_kind,
    collect_results,
    load_paper_numbers,
)
from anobench.results.record import METRIC_KEYS, RESULT_FILE

OK, OUTSIDE, MISSING, FAILED = "ok", "outside", "missing", "failed"
NOT_PAPER_BUDGET, NO_REFERENCE = "not paper budget", "no reference"
PAPER_BUDGET = "paper"
_METHOD_INFO_KEYS = {"source", "confidence", "protocol", "tolerance"}
_NO_RUN = "no run of this category"
_EPS = 1e-9  # |ours - paper| == tolerance counts as inside despite float rounding


class ReproductionInputError(AnobenchError):
    """The folder to check does not exist or holds no usable result files."""


@dataclass(frozen=True)
class CheckRow:
    method: str
    dataset: str
    category: str  # a category, or "Mean" for the mean over categories
    metric: str
    ours: float | None
    paper: float | None
    tolerance: float | None
    status: str
    n_seeds: int = 0
    std: float | None = None
    budgets: tuple[str, ...] = ()
    note: str = ""

    @property
    def delta(self) -> float | None:
        return None if self.ours is None or self.paper is None else self.ours - self.paper


@dataclass
class Report:
    rows: list[CheckRow]
    allow_reduced: bool = False
    warnings: list[str] = field(default_factory=list)
    n_runs: int = 0

    def failing_statuses(self) -> set[str]:
        return {OUTSIDE, MISSING, FAILED} | (set() if self.allow_reduced else {NOT_PAPER_BUDGET})

    @property
    def failures(self) -> list[CheckRow]:
        """Rows that make the check fail (outside, missing, failed; not paper budget unless allowed)."""
        failing = self.failing_statuses()
        return [r for r in self.rows if r.status in failing]

    @property
    def passed(self) -> bool:
        return not self.failures

    def count(self, status: str) -> int:
        return sum(r.status == status for r in self.rows)


def tolerance_for(paper: dict[str, Any], method: str, category: str, metric: str) -> float | None:
    """The allowed |ours - paper| for one cell (the per-category width if given, else the metric's;
    category "Mean" uses tolerance.mean). None when the method stores no tolerance for the metric."""
    spec = (paper.get(method) or {}).get("tolerance") or {}
    if category == MEAN_ROWS[0]:
        return (spec.get("mean") or {}).get(metric, spec.get(metric))
    return ((spec.get("categories") or {}).get(category) or {}).get(metric, spec.get(metric))


def _cell_note(paper: dict[str, Any], method: str, category: str) -> str:
    spec = (paper.get(method) or {}).get("tolerance") or {}
    return ((spec.get("categories") or {}).get(category) or {}).get("note", "")


def _paper_cells(paper: dict[str, Any], method: str) -> list[tuple[str, str, str]]:
    """(dataset, category, metric) for every number the paper reports for `method`."""
    cells = []
    for dataset, categories in (paper.get(method) or {}).items():
        if dataset in _METHOD_INFO_KEYS or not isinstance(categories, dict):
            continue
        for category, metrics in categories.items():
            cells += [(dataset, category, m) for m in METRIC_KEYS if (metrics or {}).get(m) is not None]
    return cells


def _no_reference_note(paper: dict[str, Any], method: str, dataset: str, metric: str) -> str:
    entry = paper.get(method)
    if not entry:
        return "no paper numbers stored for this method"
    if not _paper_cells(paper, method):
        return entry.get("protocol") or "the paper reports no MVTec AD numbers"
    if not any(d == dataset for d, _, _ in _paper_cells(paper, method)):
        return f"the paper reports no numbers on {dataset}"
    return f"the paper reports no {METRIC_TITLES.get(metric, metric)}"


def _collect(results_dir: Path) -> tuple[list[dict[str, Any]], list[str]]:
    """Result files of a results folder (<dir>/runs/**, as the leaderboard reads it), or of any folder
    holding result files below it (a suite's or a single run's folder)."""
    if (results_dir / "runs").is_dir():
        return collect_results(results_dir)
    return collect_results(results_dir, pattern=f"**/{RESULT_FILE}")


def _compare(ours: float, paper_value: float, tolerance: float | None) -> tuple[str, str]:
    if tolerance is None:
        return OUTSIDE, "no tolerance stored for this metric in paper_numbers.yaml"
    return (OK, "") if abs(ours - paper_value) <= tolerance + _EPS else (OUTSIDE, "")


def _category_row(paper: dict[str, Any], method: str, dataset: str, category: str, metric: str,
                  cell: Cell, paper_value: float | None) -> CheckRow:
    budgets = tuple(sorted(cell.budgets))
    common = {"method": method, "dataset": dataset, "category": category, "metric": metric, "ours": cell.mean,
              "paper": paper_value, "n_seeds": len(cell.values), "std": cell.std, "budgets": budgets}
    tolerance = tolerance_for(paper, method, category, metric) if paper_value is not None else None
    note = _cell_note(paper, method, category) if paper_value is not None else ""
    if paper_value is None:
        status, note = NO_REFERENCE, _no_reference_note(paper, method, dataset, metric)
    elif cell.mean is None:
        status = FAILED if cell.failed else MISSING
        note = f"{cell.failed} run(s) failed" if cell.failed else "the runs recorded no value for this metric"
    elif set(budgets) != {PAPER_BUDGET}:
        status, note = NOT_PAPER_BUDGET, f"budget {'+'.join(budgets) or 'unknown'}: not a reproduction"
    else:
        status, extra = _compare(cell.mean, paper_value, tolerance)
        note = "; ".join(n for n in (note, extra) if n)
        if cell.failed:
            note = "; ".join(n for n in (note, f"{cell.failed} other run(s) failed") if n)
    return CheckRow(**common, tolerance=tolerance, status=status, note=note)


def _mean_row(paper: dict[str, Any], method: str, dataset: str, metric: str, cell: dict[str, Any],
              paper_value: float) -> CheckRow:
    budgets = tuple(sorted(cell["budgets"]))
    tolerance = tolerance_for(paper, method, MEAN_ROWS[0], metric)
    note = f"over the {cell['n']} categories we have; paper mean over the same"
    if set(budgets) != {PAPER_BUDGET}:
        status, note = NOT_PAPER_BUDGET, f"budget {'+'.join(budgets) or 'unknown'}: not a reproduction"
    else:
        status, extra = _compare(cell["mean"], paper_value, tolerance)
        note = "; ".join(n for n in (note, extra) if n)
    return CheckRow(method=method, dataset=dataset, category=MEAN_ROWS[0], metric=metric, ours=cell["mean"],
                    paper=paper_value, tolerance=tolerance, status=status, n_seeds=cell["n"], budgets=budgets,
                    note=note)


def check_reproduction(results_dir: str | Path, allow_reduced: bool = False,
                       paper: dict[str, Any] | None = None) -> Report:
    """Compare every result under `results_dir` with the stored paper numbers (see the module docstring).

    Raises ReproductionInputError when the folder does not exist or holds no usable result."""
    results_dir = Path(results_dir)
    if not results_dir.is_dir():
        raise ReproductionInputError(f"{results_dir}: no such folder (give a results folder, e.g. results/)")
    paper = load_paper_numbers() if paper is None else paper
    results, warnings = _collect(results_dir)
    if not results:
        detail = f"; {len(warnings)} unreadable: {warnings[0]}" if warnings else ""
        raise ReproductionInputError(f"{results_dir}: no {RESULT_FILE} files found below it{detail}")
    board = build_leaderboard(results, paper=paper, warnings=warnings)
    if not board.runs:
        raise ReproductionInputError(
            f"{results_dir}: none of the {len(results)} result files was evaluated at ground-truth resolution "
            "(the MVTec protocol); runs with evaluation.resolution=model are not comparable with the papers")

    rows: list[CheckRow] = []
    have: set[tuple[str, str, str, str]] = set()
    for row, method, metric, cell in board.category_cells():
        have.add((method, row["dataset"], row["category"], metric))
        rows.append(_category_row(paper, method, row["dataset"], row["category"], metric, cell,
                                  row.get((method, metric, "paper"))))
    for method in board.methods:
        for dataset, category, metric in _paper_cells(paper, method):
            if (method, dataset, category, metric) not in have:
                value = paper[method][dataset][category][metric]
                rows.append(CheckRow(method=method, dataset=dataset, category=category, metric=metric, ours=None,
                                     paper=value, tolerance=tolerance_for(paper, method, category, metric),
                                     status=MISSING, note=_NO_RUN))
    for row in board.rows:
        if row["category"] != MEAN_ROWS[0]:
            continue
        for method in board.methods:
            for metric in METRIC_KEYS:
                cell, paper_mean = row.get((method, metric)), row.get((method, metric, "paper"))
                if cell and paper_mean is not None and cell["n"] >= 2:
                    rows.append(_mean_row(paper, method, row["dataset"], metric, cell, paper_mean))

    # The leaderboard's row order: textures, then objects, then the mean.
    rows.sort(key=lambda r: (r.method, r.dataset, r.category == MEAN_ROWS[0],
                             category_kind(r.dataset, r.category) != "texture", r.category,
                             METRIC_KEYS.index(r.metric)))
    return Report(rows=rows, allow_reduced=allow_reduced, warnings=warnings, n_runs=len(board.runs))


def _fmt(value: float | None) -> str:
    return "—" if value is None else f"{value:.3f}"


def describe(row: CheckRow) -> str:
    """One line naming a row, for the list of failures."""
    text = (f"{row.method} {row.dataset}/{row.category} {METRIC_TITLES.get(row.metric, row.metric)}: "
            f"ours {_fmt(row.ours)}, paper {_fmt(row.paper)}")
    if row.tolerance is not None:
        text += f" (±{row.tolerance:.3f})"
    return text + f" — {row.status}" + (f" ({row.note})" if row.note else "")


def _unrun(row: CheckRow) -> bool:
    return row.status == MISSING and row.note == _NO_RUN


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
        if _unrun(row):
            unrun.setdefault((row.method, row.dataset), []).append(row.category)
            continue
        ours = _fmt(row.ours)
        if row.std is not None:
            ours += f" ± {row.std:.3f}"
        if row.n_seeds > 1 and row.category != MEAN_ROWS[0]:
            ours += f" ({row.n_seeds} seeds)"
        delta = "" if row.delta is None else f"{row.delta:+.3f}"
        table.add_row(row.method, row.dataset, row.category, METRIC_TITLES.get(row.metric, row.metric), ours,
                      _fmt(row.paper), delta, "" if row.tolerance is None else f"±{row.tolerance:.3f}",
                      f"[{styles[row.status]}]{row.status}[/]", row.note)
    for (method, dataset), categories in unrun.items():
        names = list(dict.fromkeys(categories))
        table.add_row(method, dataset, _count(names), "all", "—", "", "", "", f"[{styles[MISSING]}]{MISSING}[/]",
                      "no run of " + ", ".join(names))
    for (method, dataset, metric), group in collapsed.items():
        values = [r.ours for r in group if r.ours is not None]
        ours = f"{sum(values) / len(values):.3f} (mean)" if values else "—"
        table.add_row(method, dataset, _count(group),
                      METRIC_TITLES.get(metric, metric), ours, "—", "", "", f"[dim]{NO_REFERENCE}[/]",
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


def reproduce_command(args: list[str]) -> int:
    """`anobench reproduce --check DIR [--allow-reduced]`: 0 all within tolerance, 1 failures listed, 2 bad input."""
    import argparse
    import os
    import sys

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
        if _unrun(row):
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


def _range_text(row: Any) -> str:
    """An expected-range row's [low, high], or — where the suite stores no range for the cell."""
    return "—" if row.low is None else f"[{row.low:.3f}, {row.high:.3f}]"


def _expected_command(ns: Any) -> int:
    import sys

    from anobench.results.expected import (DEFAULT_MARGIN, check_expected, load_expected_document,
                                           torch_threads, write_expected)

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
                      _fmt(row.ours), _range_text(row),
                      f"[{style}]{row.status}[/]", row.note)
    Console().print(table)
    bad = [r for r in rows if r.status != "ok"]
    print(f"{len(rows) - len(bad)} of {len(rows)} cell(s) within their expected range")
    if not bad:
        return 0
    print(f"expected-range check FAILED: {len(bad)} cell(s):", file=sys.stderr)
    for row in bad:
        print(f"  {row.method} {row.dataset}/{row.category} {METRIC_TITLES.get(row.metric, row.metric)}: "
              f"ours {_fmt(row.ours)}, expected "
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
