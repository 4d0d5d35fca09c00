"""Expected ranges for a suite's numbers: a regression check for suites that have no paper to compare with.

A tiny-budget run is chaotic: a different CPU (Intel vs AMD float rounding) or thread count perturbs the first
steps and the numbers move by as much as a different seed moves them. So a range is not "the value this machine
measured ± a hair" (that fingerprints one CPU) but comes from the spread over several seeds:

- each (method, category, metric) cell: centre = mean over the seeds, half-width = K_SIGMA × the method's
  pooled seed-to-seed std for that metric (pooled over its categories, so 3 seeds × 4 categories give a usable
  estimate) + `margin`;
- each method's Mean over the categories: the same, with the std of a mean (σ/√n categories), which is tight
  enough to catch a broken method (a constant or random score drags its Mean to 0.5).

    anobench bench suite=synthetic_quick seeds=[0,1,2] n_jobs=2
    anobench reproduce --write-expected synthetic_quick     # then review and commit the diff

and `anobench reproduce --check synthetic_quick --expected` checks a run (any seeds; CI runs seed 0) against it.
Missing, failed and unexpected cells always fail: those are deterministic on every machine.
"""

from __future__ import annotations

import datetime as _dt
import math
import statistics
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from anobench.errors import AnobenchError
from anobench.io import atomic_write_text
from anobench.results.leaderboard import collect_results, latest_per_seed, method_label
from anobench.results.record import RESULT_FILE, git_sha, library_versions
from anobench.results.render import format_value

EXPECTED_DIR = Path(__file__).with_name("expected")
DEFAULT_MARGIN = 0.02  # AUROC/PRO units added to every half-width (covers a seed spread that happened to be small)
K_SIGMA = 4.0  # half-width in pooled seed stds: ~1e-4 chance per cell that another machine lands outside
MIN_SEEDS = 3
METRICS = ("image_auroc", "pixel_auroc", "pro")
MEAN = "Mean"
_EPS = 1e-9


class ExpectedRangesError(AnobenchError):
    """No expected-ranges file for the suite, or it cannot be read."""


@dataclass(frozen=True)
class RangeRow:
    method: str
    dataset: str
    category: str  # a category, or "Mean" for the method's mean over the suite's categories
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


@dataclass
class _Values:
    """Per-seed values of one (method, dataset, category, metric); failed runs counted apart."""

    by_seed: dict[int, float]
    failed: int = 0


def _per_seed(suite_dir: Path) -> dict[tuple[str, str, str, str], _Values]:
    cells: dict[tuple[str, str, str, str], _Values] = defaultdict(lambda: _Values({}))
    for run in latest_per_seed(_results(suite_dir)):
        metrics = run.get("metrics") or {}
        for metric in METRICS:
            if run["status"] == "ok" and metric in metrics and metrics[metric] is None:
                continue  # null: not computed (no ground-truth masks), neither a value nor a failure
            cell = cells[(method_label(run), run["dataset"], run["category"], metric)]
            value = metrics.get(metric) if run["status"] == "ok" else None
            if value is None or math.isnan(float(value)):
                cell.failed += 1
            else:
                cell.by_seed[int(run["seed"])] = float(value)
    return cells


def _method_means(cells: dict[tuple[str, str, str, str], _Values]) -> dict[tuple[str, str, str], dict[int, float]]:
    """(method, dataset, metric) -> {seed: mean over the categories}, for seeds every category has."""
    grouped: dict[tuple[str, str, str], list[dict[int, float]]] = defaultdict(list)
    for (method, dataset, _, metric), cell in cells.items():
        grouped[(method, dataset, metric)].append(cell.by_seed)
    means = {}
    for key, per_category in grouped.items():
        seeds = set.intersection(*(set(c) for c in per_category)) if per_category else set()
        means[key] = {s: statistics.fmean(c[s] for c in per_category) for s in sorted(seeds)}
    return means


def _pooled_std(groups: list[list[float]]) -> float:
    """Pooled sample std of several groups (each group: one cell's values over seeds)."""
    dof = sum(len(g) - 1 for g in groups)
    if dof <= 0:
        return 0.0
    return math.sqrt(sum((len(g) - 1) * statistics.variance(g) for g in groups if len(g) > 1) / dof)


def _spec(values: dict[int, float], half_width: float) -> dict[str, Any]:
    centre = statistics.fmean(values.values())
    return {"values": {int(s): round(v, 4) for s, v in sorted(values.items())},
            "range": [round(max(0.0, centre - half_width), 4), round(min(1.0, centre + half_width), 4)]}


def write_expected(suite: str, suite_dir: str | Path, margin: float = DEFAULT_MARGIN,
                   path: Path | None = None, k_sigma: float = K_SIGMA, min_seeds: int = MIN_SEEDS) -> Path:
    """Store every cell and every method Mean as centre ± (k_sigma × pooled seed std + margin), clipped to [0, 1].

    Refuses failed cells and fewer than `min_seeds` seeds per cell (one seed says nothing about the spread)."""
    cells = _per_seed(Path(suite_dir))
    failed = [" ".join(k[:3]) for k, c in cells.items() if c.failed]
    if failed:
        raise AnobenchError(f"{suite_dir}: {len(failed)} cell(s) have no value (failed runs), e.g. {failed[0]}; "
                            "fix them before storing expected ranges")
    thin = [f"{' '.join(k[:3])} ({len(c.by_seed)} seed(s))" for k, c in cells.items() if len(c.by_seed) < min_seeds]
    if thin:
        raise AnobenchError(f"{suite_dir}: {len(thin)} cell(s) have fewer than {min_seeds} seeds, e.g. {thin[0]}; "
                            f"run the suite with seeds=[0,1,2] so the ranges measure the seed-to-seed spread")
    sigma: dict[tuple[str, str], float] = {}
    by_method_metric: dict[tuple[str, str], list[list[float]]] = defaultdict(list)
    for (method, _, _, metric), cell in cells.items():
        by_method_metric[(method, metric)].append(list(cell.by_seed.values()))
    for key, groups in by_method_metric.items():
        sigma[key] = _pooled_std(groups)
    ranges: dict[str, Any] = {}
    for (method, dataset, category, metric), cell in sorted(cells.items()):
        ranges.setdefault(method, {}).setdefault(f"{dataset}/{category}", {})[metric] = _spec(
            cell.by_seed, k_sigma * sigma[(method, metric)] + margin)
    means: dict[str, Any] = {}
    for (method, dataset, metric), values in sorted(_method_means(cells).items()):
        n_categories = len(by_method_metric[(method, metric)])
        means.setdefault(method, {}).setdefault(dataset, {})[metric] = _spec(
            values, k_sigma * sigma[(method, metric)] / math.sqrt(n_categories) + margin)
    versions = library_versions()
    header = (f"# Expected ranges for `anobench bench suite={suite}` (see anobench/results/expected.py): centre = mean\n"
              f"# over seeds, half-width = {k_sigma:g} x the method's pooled seed std + {margin:g}, for robustness across CPUs.\n"
              f"# Regenerate after a change meant to move these numbers, review the diff, commit:\n"
              f"#   anobench bench suite={suite} seeds=[0,1,2] n_jobs=2 && anobench reproduce --write-expected {suite}\n")
    document = {"suite": suite, "margin": margin, "k_sigma": k_sigma,
                "generated": {"at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
                              "git_sha": git_sha(), "torch": versions.get("torch"),
                              "torch_threads": torch_threads(suite_dir),
                              "seeds": sorted({s for c in cells.values() for s in c.by_seed}),
                              "lightning": versions.get("lightning")},
                "means": means, "cells": ranges}
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
        document.setdefault("means", {}).items()
    except (yaml.YAMLError, KeyError, TypeError, AttributeError) as error:
        raise ExpectedRangesError(f"{target}: not an expected-ranges file ({error})") from None
    return document


def _row(method: str, dataset: str, category: str, metric: str, spec: dict[str, Any],
         values: list[float] | None, failed: int) -> RangeRow:
    low, high = spec["range"]
    centre = statistics.fmean(spec["values"].values()) if spec.get("values") else spec.get("value")
    stored = "" if centre is None else f"stored centre {format_value(centre, 4)}"
    if values is None:
        return RangeRow(method, dataset, category, metric, None, low, high, "missing", "no run")
    if failed or not values:
        return RangeRow(method, dataset, category, metric, None, low, high, "failed", f"{failed} run(s) failed")
    ours = statistics.fmean(values)
    inside = low - _EPS <= ours <= high + _EPS
    return RangeRow(method, dataset, category, metric, ours, low, high, "ok" if inside else "outside", stored)


def check_expected(suite: str, suite_dir: str | Path, path: Path | None = None) -> list[RangeRow]:
    """Every stored cell and method Mean against the suite's results (mean over the seeds run); cells in the
    results but not in the file are listed as `unexpected` (a new method or category: regenerate the file)."""
    document = load_expected_document(suite, path)
    cells = _per_seed(Path(suite_dir))
    means = _method_means(cells)
    rows = []
    for method, datasets in document["means"].items():
        for dataset, metrics in datasets.items():
            for metric, spec in metrics.items():
                per_category = [c for k, c in cells.items() if k[0] == method and k[1] == dataset and k[3] == metric]
                failed = sum(c.failed for c in per_category)
                values = means.get((method, dataset, metric))
                rows.append(_row(method, dataset, MEAN, metric, spec,
                                 None if not per_category else list((values or {}).values()), failed))
    for method, categories in document["cells"].items():
        for key, metrics in categories.items():
            dataset, _, category = key.partition("/")
            for metric, spec in metrics.items():
                cell = cells.pop((method, dataset, category, metric), None)
                rows.append(_row(method, dataset, category, metric, spec,
                                 None if cell is None else list(cell.by_seed.values()),
                                 0 if cell is None else cell.failed))
    for (method, dataset, category, metric), cell in sorted(cells.items()):
        ours = statistics.fmean(cell.by_seed.values()) if cell.by_seed else None
        rows.append(RangeRow(method, dataset, category, metric, ours, None, None, "unexpected",
                             "not in the expected-ranges file"))
    return rows
