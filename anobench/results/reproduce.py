"""Reproduction check: our numbers against the paper's, with the tolerances stored in paper_numbers.yaml.

Our value for a (method, category, metric) is exactly the leaderboard's cell (same result selection:
ground-truth-resolution results, newest result per seed, mean over seeds), so the check and the leaderboard
can never disagree about what "ours" is. Each compared cell gets one status:

- ``ok`` / ``outside``: a paper-budget value within / outside the tolerance of the paper's number;
- ``missing``: the paper has a number for a method we ran, but we have no value for that category;
- ``failed``: every run of that cell failed;
- ``paper (released weights)`` values (the authors' own trained weights, evaluated by anobench) are compared
  like ``paper`` ones, with a note: they check the evaluation, never a reproduction of training;
- ``not paper budget``: our value was not (only) trained with budget label ``paper``. Such a value is never
  a reproduction: it fails the check unless ``allow_reduced`` is set, and then it is still listed, never
  counted as a pass;
- ``no reference``: the paper reports no number for this method/dataset/metric. Listed, neither a pass nor
  a failure.

Besides the categories, the mean over categories (the leaderboard's ``Mean`` row: paper mean over the same
categories) is checked against the tighter ``tolerance.mean`` width when at least two categories have a value.

The check is pure (no printing, no argument parsing): `anobench reproduce` is anobench/tasks/reproduce.py.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from anobench.errors import AnobenchError
from anobench.results.leaderboard import (
    METRIC_TITLES,
    MEAN_ROWS,
    Cell,
    MeanCell,
    build_leaderboard,
    category_kind,
    collect_results,
    load_paper_numbers,
)
from anobench.results.record import METRIC_KEYS, RESULT_FILE
from anobench.results.render import RELEASED_BUDGET, format_value

OK, OUTSIDE, MISSING, FAILED = "ok", "outside", "missing", "failed"
NOT_PAPER_BUDGET, NO_REFERENCE = "not paper budget", "no reference"
PAPER_BUDGET = "paper"
# budgets compared with the paper: its training budget, or the authors' released weights (README of the method)
COMPARED_BUDGETS = {PAPER_BUDGET, RELEASED_BUDGET}
RELEASED_NOTE = "authors' released weights: checks the evaluation, not a reproduction of training"
_METHOD_INFO_KEYS = {"source", "confidence", "protocol", "tolerance"}
NO_RUN = "no run of this category"
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

    @property
    def unrun(self) -> bool:
        """A category the paper reports that no run covered (listed per method, not one line each)."""
        return self.status == MISSING and self.note == NO_RUN


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
    elif not budgets or not set(budgets) <= COMPARED_BUDGETS:
        status, note = NOT_PAPER_BUDGET, f"budget {'+'.join(budgets) or 'unknown'}: not a reproduction"
    else:
        status, extra = _compare(cell.mean, paper_value, tolerance)
        note = "; ".join(n for n in (note, extra, RELEASED_NOTE if RELEASED_BUDGET in budgets else "") if n)
        if cell.failed:
            note = "; ".join(n for n in (note, f"{cell.failed} other run(s) failed") if n)
    return CheckRow(**common, tolerance=tolerance, status=status, note=note)


def _mean_row(paper: dict[str, Any], method: str, dataset: str, metric: str, cell: MeanCell,
              paper_value: float) -> CheckRow:
    budgets = tuple(sorted(cell.budgets))
    tolerance = tolerance_for(paper, method, MEAN_ROWS[0], metric)
    note = f"over the {cell.n} categories we have; paper mean over the same"
    if not budgets or not set(budgets) <= COMPARED_BUDGETS:
        status, note = NOT_PAPER_BUDGET, f"budget {'+'.join(budgets) or 'unknown'}: not a reproduction"
    else:
        status, extra = _compare(cell.mean, paper_value, tolerance)
        note = "; ".join(n for n in (note, extra, RELEASED_NOTE if RELEASED_BUDGET in budgets else "") if n)
    return CheckRow(method=method, dataset=dataset, category=MEAN_ROWS[0], metric=metric, ours=cell.mean,
                    paper=paper_value, tolerance=tolerance, status=status, n_seeds=cell.n, budgets=budgets,
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
                                     status=MISSING, note=NO_RUN))
    for row in board.rows:
        if row["category"] != MEAN_ROWS[0]:
            continue
        for method in board.methods:
            for metric in METRIC_KEYS:
                cell, paper_mean = row.get((method, metric)), row.get((method, metric, "paper"))
                if cell is not None and paper_mean is not None and cell.n >= 2:
                    rows.append(_mean_row(paper, method, row["dataset"], metric, cell, paper_mean))

    # The leaderboard's row order: textures, then objects, then the mean.
    rows.sort(key=lambda r: (r.method, r.dataset, r.category == MEAN_ROWS[0],
                             category_kind(r.dataset, r.category) != "texture", r.category,
                             METRIC_KEYS.index(r.metric)))
    return Report(rows=rows, allow_reduced=allow_reduced, warnings=warnings, n_runs=len(board.runs))


def describe(row: CheckRow) -> str:
    """One line naming a row, for the list of failures."""
    text = (f"{row.method} {row.dataset}/{row.category} {METRIC_TITLES.get(row.metric, row.metric)}: "
            f"ours {format_value(row.ours, missing='—')}, paper {format_value(row.paper, missing='—')}")
    if row.tolerance is not None:
        text += f" (±{format_value(row.tolerance)})"
    return text + f" — {row.status}" + (f" ({row.note})" if row.note else "")
