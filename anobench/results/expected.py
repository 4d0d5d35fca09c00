"""Expected ranges for a suite's numbers: a regression check for suites that have no paper to compare with.

The synthetic suite's runs are seeded and deterministic on CPU, so what each method scores on each synthetic
category is a fingerprint of its training and scoring code. `anobench/results/expected/<suite>.yaml` stores,
per (method, category, metric), the value measured when the file was written and the range [value − margin,
value + margin] a run must land in. A change that breaks (or changes) any method's learning moves its
numbers out of range and fails the check; a change meant to move them regenerates the file:

    anobench bench suite=synthetic_quick n_jobs=2
    anobench reproduce --write-expected synthetic_quick     # then review and commit the diff

and `anobench reproduce --check synthetic_quick --expected` checks a run against it (CI does both, see
tests/test_expected.py). The values come from the suite's leaderboard cells (mean over seeds), the same
numbers the leaderboard shows.
"""

from __future__ import annotations

import datetime as _dt
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from anobench.errors import AnobenchError
from anobench.io import atomic_write_text
from anobench.results.leaderboard import build_leaderboard, collect_results
from anobench.results.record import RESULT_FILE, git_sha, library_versions

EXPECTED_DIR = Path(__file__).with_name("expected")
DEFAULT_MARGIN = 0.05  # AUROC/PRO units: a few image-AUROC steps on the synthetic test sets
_EPS = 1e-9


class ExpectedRangesError(AnobenchError):
    """No expected-ranges file for the suite, or it cannot be read."""


@dataclass(frozen=True)
class RangeRow:
    method: str
    dataset: str
    category: str
    metric: str
    ours: float | None
    low: float | None
    high: float | None
    status: str  # ok | outside | missing | failed | unexpected
    note: str = ""


def expected_path(suite: str) -> Path:
    return EXPECTED_DIR / f"{suite}.yaml"


def _results(suite_dir: Path) -> list[dict[str, Any]]:
    results, _ = collect_results(suite_dir)  # runs/** only: stale/ holds superseded runs
    if not results:
        raise AnobenchError(f"{suite_dir}: no {RESULT_FILE} files below it (run the suite first)")
    return results


def torch_threads(suite_dir: str | Path) -> list[int]:
    """The torch thread counts the suite's runs used: float reductions, hence the numbers, depend on them."""
    return sorted({int((r.get("device") or {}).get("torch_threads") or 0) for r in _results(Path(suite_dir))})


def _cells(suite_dir: Path) -> dict[tuple[str, str, str, str], Any]:
    board = build_leaderboard(_results(suite_dir))
    return {(method, row["dataset"], row["category"], metric): cell
            for row, method, metric, cell in board.category_cells()}


def write_expected(suite: str, suite_dir: str | Path, margin: float = DEFAULT_MARGIN,
                   path: Path | None = None) -> Path:
    """Store every cell of the suite's results as value ± margin (clipped to [0, 1]); refuses failed cells."""
    cells = _cells(Path(suite_dir))
    failed = [" ".join(k[:3]) for k, c in cells.items() if c.mean is None]
    if failed:
        raise AnobenchError(f"{suite_dir}: {len(failed)} cell(s) have no value (failed runs), e.g. {failed[0]}; "
                            "fix them before storing expected ranges")
    ranges: dict[str, Any] = {}
    for (method, dataset, category, metric), cell in sorted(cells.items()):
        value = round(float(cell.mean), 4)
        ranges.setdefault(method, {}).setdefault(f"{dataset}/{category}", {})[metric] = {
            "value": value, "range": [round(max(0.0, value - margin), 4), round(min(1.0, value + margin), 4)]}
    versions = library_versions()
    header = (f"# Expected ranges for `anobench bench suite={suite}` (seeded CPU runs; see anobench/results/expected.py).\n"
              f"# Regenerate after a change meant to move these numbers, review the diff, commit:\n"
              f"#   anobench bench suite={suite} n_jobs=2 && anobench reproduce --write-expected {suite}\n")
    document = {"suite": suite, "margin": margin,
                "generated": {"at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
                              "git_sha": git_sha(), "torch": versions.get("torch"),
                              "torch_threads": torch_threads(suite_dir),
                              "lightning": versions.get("lightning")},
                "cells": ranges}
    target = path or expected_path(suite)
    atomic_write_text(target, header + yaml.safe_dump(document, sort_keys=False, default_flow_style=None))
    return target


def load_expected_document(suite: str, path: Path | None = None) -> dict[str, Any]:
    target = path or expected_path(suite)
    if not target.is_file():
        raise ExpectedRangesError(f"no expected ranges for suite {suite} ({target}); write them with "
                                  f"`anobench reproduce --write-expected {suite}` after running the suite")
    try:
        document = yaml.safe_load(target.read_text())
        document["cells"].items()
    except (yaml.YAMLError, KeyError, TypeError, AttributeError) as error:
        raise ExpectedRangesError(f"{target}: not an expected-ranges file ({error})") from None
    return document


def check_expected(suite: str, suite_dir: str | Path, path: Path | None = None) -> list[RangeRow]:
    """Every stored cell against the suite's results; cells in the results but not in the file are listed
    as `unexpected` (a new method or category: regenerate the file)."""
    expected = load_expected_document(suite, path)["cells"]
    cells = _cells(Path(suite_dir))
    rows = []
    for method, categories in expected.items():
        for key, metrics in categories.items():
            dataset, _, category = key.partition("/")
            for metric, spec in metrics.items():
                low, high = spec["range"]
                cell = cells.pop((method, dataset, category, metric), None)
                if cell is None:
                    rows.append(RangeRow(method, dataset, category, metric, None, low, high, "missing", "no run"))
                elif cell.mean is None:
                    rows.append(RangeRow(method, dataset, category, metric, None, low, high, "failed",
                                         f"{cell.failed} run(s) failed"))
                else:
                    inside = low - _EPS <= cell.mean <= high + _EPS
                    rows.append(RangeRow(method, dataset, category, metric, cell.mean, low, high,
                                         "ok" if inside else "outside", f"stored {spec['value']:.4f}"))
    for (method, dataset, category, metric), cell in sorted(cells.items()):
        rows.append(RangeRow(method, dataset, category, metric, cell.mean, None, None, "unexpected",
                             "not in the expected-ranges file"))
    return rows
