"""Leaderboard aggregation: result files and the stored paper numbers -> typed rows (no files, no text).

One row per (dataset, category); per method: image AUROC, pixel AUROC, PRO (mean over seeds, using the
latest result of each seed) with the paper's number beside ours where a paper reports one; on request
(`metrics=`, `anobench leaderboard --metrics`) image / pixel AP and F1-max too (`ALL_METRIC_KEYS`).
Each dataset (the record's ``dataset``: data.name for data=folder) is its own section with its own mean rows:
all categories, textures, objects (MVTec AD's split; MVTec AD's Mean counts only its 15 categories).
A metric a run recorded as null was not computed (no ground-truth masks: the pixel metrics): its cell is
`not_computed`, and a mean row with such a member is null for that metric.
Rendering (markdown, CSV, console, HTML) is anobench/results/render.py;
the publisher that writes the files is anobench/tasks/publish.py.
"""

from __future__ import annotations

import math
import statistics
from collections import defaultdict
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, ClassVar, Iterable, Sequence

import yaml

from anobench.errors import AnobenchError
from anobench.results.record import ALL_METRIC_KEYS, METRIC_KEYS, RESULT_FILE, RUNNING, read_result

METRIC_TITLES = {"image_auroc": "image AUROC", "pixel_auroc": "pixel AUROC", "pro": "PRO",
                 "image_ap": "image AP", "pixel_ap": "pixel AP", "image_f1_max": "image F1-max",
                 "pixel_f1_max": "pixel F1-max"}
MEAN_ROWS = ("Mean", "Texture mean", "Object mean")
OBJECT_DATASETS = ("visa", "btad", "mpdd")  # product datasets: every category an object (no texture split)


def select_metrics(spec: str | Sequence[str] | None) -> tuple[str, ...]:
    """The leaderboard metrics a request names: None -> the default three (`METRIC_KEYS`); "all" -> every metric
    (`ALL_METRIC_KEYS`); else a comma-separated string or a sequence of metric keys, in the order given
    (repeats dropped). An unknown name is one AnobenchError listing the valid ones."""
    if spec is None:
        return METRIC_KEYS
    names = [n.strip() for n in (spec.split(",") if isinstance(spec, str) else spec)]
    names = [n for n in names if n]
    if names == ["all"]:
        return ALL_METRIC_KEYS
    unknown = [n for n in names if n not in ALL_METRIC_KEYS]
    if unknown or not names:
        what = f"unknown metric(s) {', '.join(unknown)}" if unknown else "no metric named"
        raise AnobenchError(f"{what}; valid metrics: {', '.join(ALL_METRIC_KEYS)} (comma-separated), or all")
    return tuple(dict.fromkeys(names))


def load_paper_numbers() -> dict[str, Any]:
    """The stored paper-reported numbers (anobench/results/paper_numbers.yaml)."""
    text = resources.files("anobench.results").joinpath("paper_numbers.yaml").read_text(encoding="utf-8")
    return yaml.safe_load(text)


def category_kind(dataset: str, category: str) -> str:
    """'texture' or 'object' (MVTec AD's split; VisA, BTAD and MPDD: all objects), or 'other' (user datasets, and
    a category outside MVTec AD's 15 in an mvtec row, which never enters MVTec AD's Mean)."""
    from anobench.data import MVTEC_CATEGORIES, MVTEC_TEXTURES, SYNTHETIC_CATEGORIES

    if dataset == "synthetic":
        return SYNTHETIC_CATEGORIES.get(category, "other")
    if dataset == "mvtec":
        if category not in MVTEC_CATEGORIES:
            return "other"
        return "texture" if category in MVTEC_TEXTURES else "object"
    return "object" if dataset in OBJECT_DATASETS else "other"


def mean_kinds(dataset: str) -> tuple[str, ...]:
    """The category kinds a dataset's Mean row averages: MVTec AD's Mean is over its own categories only."""
    return ("texture", "object") if dataset == "mvtec" else ("texture", "object", "other")


def collect_results(results_dir: str | Path,
                    pattern: str = f"runs/**/{RESULT_FILE}") -> tuple[list[dict[str, Any]], list[str]]:
    """Every readable result.json under results_dir matching `pattern`, plus a warning per unreadable one."""
    results, warnings = [], []
    for path in sorted(Path(results_dir).glob(pattern)):
        try:
            record = read_result(path)
        except ValueError as error:
            warnings.append(str(error))
            continue
        record["_path"] = str(path)
        results.append(record)
    return results, warnings


def method_label(record: dict[str, Any]) -> str:
    """The method's column name: semi-supervised runs (trained with labelled defect images) get their own
    column, ``<method> [semi-supervised: <source>]``, never averaged with or mistaken for the
    unsupervised protocol."""
    evaluation = record.get("evaluation") or {}
    method_cfg = (record.get("config") or {}).get("method") or {}  # failed runs have no evaluation
    if evaluation.get("supervision", method_cfg.get("supervision")) == "semi_supervised":
        source = ((evaluation.get("labelled_set") or {}).get("source")
                  or (method_cfg.get("module") or {}).get("labelled_source", "?"))
        return f"{record['method']} [semi-supervised: {source}]"
    return record["method"]


def latest_per_seed(results: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """Keep the newest finished result for each (method, dataset, category, seed)."""
    chosen: dict[tuple, dict[str, Any]] = {}
    for record in results:
        key = (method_label(record), record["dataset"], record["category"], record["seed"])
        if key not in chosen or str(record.get("finished_at", "")) >= str(chosen[key].get("finished_at", "")):
            chosen[key] = record
    return [chosen[k] for k in sorted(chosen, key=lambda k: tuple(str(x) for x in k))]


@dataclass
class Cell:
    """Our value for one (row, method, metric): mean over ok seeds, or a failure."""

    values: list[float] = field(default_factory=list)
    failed: int = 0
    budgets: set[str] = field(default_factory=set)

    @property
    def mean(self) -> float | None:
        finite = [v for v in self.values if v is not None and not math.isnan(v)]
        return statistics.fmean(finite) if finite else None

    @property
    def n_seeds(self) -> int:
        """Seeds with a value (the `n` of mean ± std)."""
        return len([v for v in self.values if v is not None and not math.isnan(v)])

    @property
    def std(self) -> float | None:
        finite = [v for v in self.values if v is not None and not math.isnan(v)]
        return statistics.stdev(finite) if len(finite) > 1 else None

    @property
    def count(self) -> int:
        """Seeds counted in the cell (ok runs, a missing metric included): the CSV's `n_seeds`."""
        return len(self.values)

    @property
    def all_failed(self) -> bool:
        """Every run of the cell failed: no value to show."""
        return bool(self.failed) and not self.values

    @property
    def not_computed(self) -> bool:
        """Every ok run recorded the metric as null: not computed (no ground-truth masks for a pixel metric)."""
        return bool(self.values) and all(v is None for v in self.values)


@dataclass
class MeanCell:
    """Our mean over the categories of a mean row for one (method, metric): `n` of its `of` categories
    have a value; `budgets` are the budgets of every member cell. `not_computed`: a member's metric was not
    computed (null), so the mean is null too (a mean over the other categories would not compare)."""

    mean: float | None
    n: int
    of: int
    budgets: set[str] = field(default_factory=set)
    not_computed: bool = False
    std: ClassVar[None] = None  # a mean over categories carries no seed spread
    failed: ClassVar[int] = 0
    all_failed: ClassVar[bool] = False

    @property
    def count(self) -> int:
        """Categories with a value (the CSV's `n_seeds` column holds it for mean rows)."""
        return self.n


AnyCell = Cell | MeanCell  # a leaderboard row's value for one (method, metric)


@dataclass
class Leaderboard:
    methods: list[str]
    rows: list[dict[str, Any]]  # one per (dataset, category), then mean rows per dataset
    runs: list[dict[str, Any]]
    warnings: list[str]
    # method -> the paper's protocol note (paper_numbers.yaml `protocol`), for the methods on the board
    protocols: dict[str, str] = field(default_factory=dict)
    metrics: tuple[str, ...] = METRIC_KEYS  # the metrics aggregated (and rendered), in table order

    def category_cells(self) -> Iterable[tuple[dict[str, Any], str, str, Cell]]:
        """(row, method, metric, cell) for every filled cell of the per-category rows (mean rows skipped)."""
        for row in self.rows:
            if row["kind"] == "mean":
                continue
            for method in self.methods:
                for metric in self.metrics:
                    cell = row.get((method, metric))
                    if cell is not None:
                        yield row, method, metric, cell


def build_leaderboard(results: list[dict[str, Any]], paper: dict[str, Any] | None = None,
                      warnings: list[str] | None = None, metrics: str | Sequence[str] | None = None) -> Leaderboard:
    """Aggregate result records into leaderboard rows (pure function; no files). `metrics`: which metrics
    (`select_metrics`: default the three main ones, "all", or a list of keys)."""
    metric_keys = select_metrics(metrics)
    paper = load_paper_numbers() if paper is None else paper
    # Only MVTec-protocol results (maps at ground-truth resolution) are comparable across rows.
    runs = latest_per_seed(r for r in results if _resolution(r) == "ground_truth")
    methods = sorted({method_label(r) for r in runs})
    cells: dict[tuple[str, str], dict[tuple[str, str], Cell]] = defaultdict(lambda: defaultdict(Cell))
    for run in runs:
        if run["status"] == RUNNING:  # no result yet (or killed before it recorded one): neither a value nor a failure
            continue
        row_cells = cells[(run["dataset"], run["category"])]
        for metric in metric_keys:
            cell = row_cells[(method_label(run), metric)]
            if run["status"] == "ok":
                metrics = run.get("metrics") or {}
                value = metrics.get(metric)
                if value is None:  # null: not computed (None); absent (an older record): undefined (nan)
                    cell.values.append(None if metric in metrics else float("nan"))
                else:
                    cell.values.append(float(value))
                cell.budgets.add(run.get("budget", {}).get("label", "unknown"))
            else:
                cell.failed += 1

    rows: list[dict[str, Any]] = []
    for dataset in sorted({d for d, _ in cells}):
        keys = sorted((k for k in cells if k[0] == dataset), key=lambda k: (category_kind(*k) != "texture", k[1]))
        body = []
        for key in keys:
            row = {"dataset": dataset, "category": key[1], "kind": category_kind(*key)}
            for method in methods:
                for metric in metric_keys:
                    cell = cells[key].get((method, metric))
                    row[(method, metric)] = cell
                    row[(method, metric, "paper")] = _paper_value(paper, method, dataset, key[1], metric)
            body.append(row)
        rows.extend(body)
        for title, kinds in zip(MEAN_ROWS, (mean_kinds(dataset), ("texture",), ("object",))):
            members = [r for r in body if r["kind"] in kinds]
            if not members or (title != "Mean" and len(members) == len(
                    [r for r in body if r["kind"] in mean_kinds(dataset)])):
                continue
            mean_row: dict[str, Any] = {"dataset": dataset, "category": title, "kind": "mean"}
            for method in methods:
                for metric in metric_keys:
                    mean_row[(method, metric)] = _mean_cell(members, method, metric)
                    mean_row[(method, metric, "paper")] = _paper_mean(members, method, metric)
            rows.append(mean_row)
    return Leaderboard(methods=methods, rows=rows, runs=runs, warnings=list(warnings or []),
                       protocols=protocol_notes(paper, (r["method"] for r in runs)), metrics=metric_keys)


def protocol_notes(paper: dict[str, Any], methods: Iterable[str]) -> dict[str, str]:
    """method -> its paper's protocol note (paper_numbers.yaml `protocol`), for those of `methods` that have one."""
    notes = {}
    for method in sorted(set(methods)):
        entry = paper.get(method)
        note = entry.get("protocol") if isinstance(entry, dict) else None
        if note:
            notes[method] = str(note)
    return notes


def _resolution(record: dict[str, Any]) -> str:
    evaluation = record.get("evaluation") or {}
    configured = ((record.get("config") or {}).get("evaluation") or {}).get("resolution", "ground_truth")
    return evaluation.get("resolution") or configured


def _paper_value(paper: dict, method: str, dataset: str, category: str, metric: str) -> float | None:
    return (((paper.get(method) or {}).get(dataset) or {}).get(category) or {}).get(metric)


def _mean_cell(members: list[dict], method: str, metric: str) -> MeanCell:
    cells = [r[(method, metric)] for r in members if r.get((method, metric)) is not None]
    budgets = set().union(*(c.budgets for c in cells))
    if any(c.not_computed for c in cells):
        return MeanCell(mean=None, n=0, of=len(members), budgets=budgets, not_computed=True)
    finite = [c.mean for c in cells if c.mean is not None]
    return MeanCell(mean=statistics.fmean(finite) if finite else None, n=len(finite), of=len(members),
                    budgets=budgets)


def _paper_mean(members: list[dict], method: str, metric: str) -> float | None:
    """Paper mean over the same categories we have values for (so the two means compare)."""
    ours = [r for r in members if r.get((method, metric)) is not None and r[(method, metric)].mean is not None]
    values = [r[(method, metric, "paper")] for r in ours]
    if not ours or any(v is None for v in values):
        return None
    return statistics.fmean(values)
