"""Leaderboard tables, rebuilt from result files and the stored paper numbers (never edited by hand).

One row per (dataset, category); per method: image AUROC, pixel AUROC, PRO (mean over seeds, using the
latest result of each seed) with the paper's number beside ours where a paper reports one. Mean rows:
all categories, textures, objects. Rows not produced with the paper's budget are marked †.
"""

from __future__ import annotations

import csv
import io
import math
import statistics
from collections import defaultdict
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Iterable

import yaml

from anobench.io import atomic_write_text, folder_lock
from anobench.results.record import METRIC_KEYS, RESULT_FILE, read_result

METRIC_TITLES = {"image_auroc": "image AUROC", "pixel_auroc": "pixel AUROC", "pro": "PRO"}
MEAN_ROWS = ("Mean", "Texture mean", "Object mean")


def load_paper_numbers() -> dict[str, Any]:
    """The stored paper-reported numbers (anobench/results/paper_numbers.yaml)."""
    text = resources.files("anobench.results").joinpath("paper_numbers.yaml").read_text(encoding="utf-8")
    return yaml.safe_load(text)


def category_kind(dataset: str, category: str) -> str:
    """'texture' or 'object' (or 'other' for user datasets), for the texture/object mean rows."""
    from anobench.data import MVTEC_TEXTURES, SYNTHETIC_CATEGORIES

    if dataset == "synthetic":
        return SYNTHETIC_CATEGORIES.get(category, "other")
    return "texture" if category in MVTEC_TEXTURES else "object"


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
    """The method's column name: semi-supervised runs (labelled defect images, e.g. NBS) get their own
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


@dataclass
class Leaderboard:
    methods: list[str]
    rows: list[dict[str, Any]]  # one per (dataset, category), then mean rows per dataset
    runs: list[dict[str, Any]]
    warnings: list[str]

    def category_cells(self) -> Iterable[tuple[dict[str, Any], str, str, Cell]]:
        """(row, method, metric, cell) for every filled cell of the per-category rows (mean rows skipped)."""
        for row in self.rows:
            if row["kind"] == "mean":
                continue
            for method in self.methods:
                for metric in METRIC_KEYS:
                    cell = row.get((method, metric))
                    if cell is not None:
                        yield row, method, metric, cell


def build_leaderboard(results: list[dict[str, Any]], paper: dict[str, Any] | None = None,
                      warnings: list[str] | None = None) -> Leaderboard:
    """Aggregate result records into leaderboard rows (pure function; no files)."""
    paper = load_paper_numbers() if paper is None else paper
    # Only MVTec-protocol results (maps at ground-truth resolution) are comparable across rows.
    runs = latest_per_seed(r for r in results if _resolution(r) == "ground_truth")
    methods = sorted({method_label(r) for r in runs})
    cells: dict[tuple[str, str], dict[tuple[str, str], Cell]] = defaultdict(lambda: defaultdict(Cell))
    for run in runs:
        row_cells = cells[(run["dataset"], run["category"])]
        for metric in METRIC_KEYS:
            cell = row_cells[(method_label(run), metric)]
            if run["status"] == "ok":
                value = (run.get("metrics") or {}).get(metric)
                cell.values.append(float("nan") if value is None else float(value))
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
                for metric in METRIC_KEYS:
                    cell = cells[key].get((method, metric))
                    row[(method, metric)] = cell
                    row[(method, metric, "paper")] = _paper_value(paper, method, dataset, key[1], metric)
            body.append(row)
        rows.extend(body)
        for title, kinds in zip(MEAN_ROWS, (("texture", "object", "other"), ("texture",), ("object",))):
            members = [r for r in body if r["kind"] in kinds]
            if not members or (title != "Mean" and len(members) == len(body)):
                continue
            mean_row: dict[str, Any] = {"dataset": dataset, "category": title, "kind": "mean"}
            for method in methods:
                for metric in METRIC_KEYS:
                    mean_row[(method, metric)] = _mean_cell(members, method, metric)
                    mean_row[(method, metric, "paper")] = _paper_mean(members, method, metric)
            rows.append(mean_row)
    return Leaderboard(methods=methods, rows=rows, runs=runs, warnings=list(warnings or []))


def _resolution(record: dict[str, Any]) -> str:
    evaluation = record.get("evaluation") or {}
    configured = ((record.get("config") or {}).get("evaluation") or {}).get("resolution", "ground_truth")
    return evaluation.get("resolution") or configured


def _paper_value(paper: dict, method: str, dataset: str, category: str, metric: str) -> float | None:
    return (((paper.get(method) or {}).get(dataset) or {}).get(category) or {}).get(metric)


def _mean_cell(members: list[dict], method: str, metric: str) -> dict[str, Any]:
    means = [r[(method, metric)].mean for r in members if r.get((method, metric)) is not None]
    finite = [m for m in means if m is not None]
    budgets = set().union(*(r[(method, metric)].budgets for r in members if r.get((method, metric)) is not None))
    return {"mean": statistics.fmean(finite) if finite else None, "n": len(finite), "of": len(members),
            "budgets": budgets}


def _paper_mean(members: list[dict], method: str, metric: str) -> float | None:
    """Paper mean over the same categories we have values for (so the two means compare)."""
    ours = [r for r in members if r.get((method, metric)) is not None and r[(method, metric)].mean is not None]
    values = [r[(method, metric, "paper")] for r in ours]
    if not ours or any(v is None for v in values):
        return None
    return statistics.fmean(values)


def _fmt(value: float | None) -> str:
    return "" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.3f}"


def _cell_text(cell: Any) -> str:
    if cell is None:
        return ""
    if isinstance(cell, dict):  # mean row
        text = _fmt(cell["mean"])
        if text and cell["n"] < cell["of"]:
            text += f" ({cell['n']}/{cell['of']})"
        budgets = cell["budgets"]
    else:
        text = _fmt(cell.mean)
        if cell.std is not None:
            text += f" ± {cell.std:.3f}"
        if cell.failed and not cell.values:
            return "failed"
        notes = [f"{cell.n_seeds} seeds"] if cell.std is not None else []
        if cell.failed:
            notes.append(f"{cell.failed} failed")
        if notes:
            text += f" ({', '.join(notes)})"
        budgets = cell.budgets
    if text and budgets and budgets != {"paper"}:
        text += "†"
    return text


def _columns(board: Leaderboard) -> list[tuple]:
    cols: list[tuple] = []
    for method in board.methods:
        for metric in METRIC_KEYS:
            cols.append((method, metric))
            if any(r.get((method, metric, "paper")) is not None for r in board.rows):
                cols.append((method, metric, "paper"))
    return cols


def _header(col: tuple) -> str:
    title = f"{col[0]} {METRIC_TITLES[col[1]]}"
    return title + " (paper)" if len(col) == 3 else title


def to_csv(board: Leaderboard) -> str:
    cols = _columns(board)
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    header = ["dataset", "category", "kind"]
    for col in cols:
        name = "/".join(col)
        header += [name] if len(col) == 3 else [name, f"{name}/std", f"{name}/n_seeds", f"{name}/budget"]
    writer.writerow(header)
    for row in board.rows:
        line = [row["dataset"], row["category"], row["kind"]]
        for col in cols:
            cell = row.get(col)
            if len(col) == 3:
                line.append(_fmt(cell))
            elif isinstance(cell, dict):
                line += [_fmt(cell["mean"]), "", cell["n"], ";".join(sorted(cell["budgets"]))]
            elif cell is None:
                line += ["", "", 0, ""]
            else:
                mean = "failed" if cell.failed and not cell.values else _fmt(cell.mean)
                line += [mean, _fmt(cell.std), len(cell.values), ";".join(sorted(cell.budgets))]
        writer.writerow(line)
    return out.getvalue()


def to_markdown(board: Leaderboard, source: str) -> str:
    cols = _columns(board)
    lines = [
        "# anobench leaderboard",
        "",
        f"Rebuilt from {len(board.runs)} result file(s) under `{source}` (next to this file) by anobench; "
        "do not edit by hand. Values are fractions; mean over seeds, `mean ± std (n seeds)` where there are "
        "several (sample std; CSV: `<method>/<metric>/std` and `/n_seeds` columns).",
        "`(paper)` columns: the number the paper reports (anobench/results/paper_numbers.yaml, with sources); "
        "Patch SVDD's paper measures pixel AUROC at 256×256, ours at ground-truth resolution.",
        "† = not trained with the paper's budget (smoke or reduced run): **not a paper reproduction**.",
        "`[semi-supervised: …]` columns learned from labelled defect images (test_split: a few test images, "
        "left out of that method's evaluation; synthetic: generator defects only) — not comparable with the "
        "unsupervised columns.",
        "Mean rows average categories; `(n/m)` = only n of m categories have a value. "
        "Runs evaluated at model resolution (`evaluation.resolution=model`) are left out.",
        "Heatmaps, curves and the provenance of every number: [report.html](report.html) (`anobench report`).",
        "",
    ]
    for dataset in dict.fromkeys(r["dataset"] for r in board.rows):
        lines += [f"## {dataset}", "", "| category | " + " | ".join(_header(c) for c in cols) + " |",
                  "|---|" + "---:|" * len(cols)]
        for row in (r for r in board.rows if r["dataset"] == dataset):
            name = f"**{row['category']}**" if row["kind"] == "mean" else row["category"]
            cells = [_fmt(row.get(c)) if len(c) == 3 else _cell_text(row.get(c)) for c in cols]
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
        lines.append("")
    lines += ["## Runs", "", "| method | dataset | category | seed | status | budget | steps | device | git sha | finished | result |",
              "|---|---|---|---:|---|---|---:|---|---|---|---|"]
    for run in board.runs:
        budget = run.get("budget", {})
        device = run.get("device", {})
        status = run["status"] if run["status"] == "ok" else f"failed: {(run.get('error') or {}).get('type', '?')}"
        lines.append(
            f"| {method_label(run)} | {run['dataset']} | {run['category']} | {run['seed']} | {status} | "
            f"{budget.get('label', '?')} | {budget.get('global_step', '')} | {device.get('gpu') or device.get('cpu', '')} | "
            f"{(run.get('git_sha') or '')[:12]} | {run.get('finished_at', '')} | `{run.get('_rel_path', run['_path'])}` |")
    if board.warnings:
        lines += ["", "## Skipped files", ""] + [f"- {w}" for w in board.warnings]
    return "\n".join(lines) + "\n"


def write_leaderboard(results_dir: str | Path) -> Leaderboard:
    """Rebuild results_dir/leaderboard.{md,csv} from results_dir/runs/**/result.json, atomically and
    under a lock (parallel sweep jobs may rebuild at the same time)."""
    results_dir = Path(results_dir)
    with folder_lock(results_dir, ".leaderboard.lock"):
        results, warnings = collect_results(results_dir)
        for record in results:
            record["_rel_path"] = str(Path(record["_path"]).relative_to(results_dir))
        board = build_leaderboard(results, warnings=warnings)
        atomic_write_text(results_dir / "leaderboard.csv", to_csv(board))
        atomic_write_text(results_dir / "leaderboard.md", to_markdown(board, source="runs/"))
        _write_report_beside(results_dir, results, warnings, board)
    return board


def _write_report_beside(results_dir: Path, results: list[dict[str, Any]], warnings: list[str],
                         board: Leaderboard) -> None:
    """Keep report.html (linked from leaderboard.md) in step with the tables; a page problem is only a warning."""
    try:
        from anobench.visualize.report import write_report

        write_report(results_dir, results=results, warnings=warnings, board=board)
    except Exception as error:  # noqa: BLE001 - the tables are written; the page is a convenience
        print(f"warning: could not write {results_dir / 'report.html'}: {type(error).__name__}: {error}")


def print_leaderboard(board: Leaderboard, only: set[tuple] | None = None) -> None:
    """A rich table of the leaderboard (optionally only the rows of `only` (dataset, category) keys)."""
    from rich.console import Console
    from rich.table import Table

    table = Table(title="anobench leaderboard († = not the paper's budget)")
    table.add_column("dataset")
    table.add_column("category")
    for method in board.methods:
        for metric in METRIC_KEYS:
            table.add_column(f"{method}\n{METRIC_TITLES[metric]}", justify="right")
    for row in board.rows:
        if only is not None and row["kind"] != "mean" and (row["dataset"], row["category"]) not in only:
            continue
        if only is not None and row["kind"] == "mean" and row["dataset"] not in {d for d, _ in only}:
            continue
        table.add_row(row["dataset"], row["category"],
                      *[_cell_text(row.get((m, k))) for m in board.methods for k in METRIC_KEYS],
                      end_section=row["kind"] == "mean" and row["category"] == MEAN_ROWS[0])
    Console().print(table)
    for warning in board.warnings:
        Console(stderr=True).print(f"[yellow]skipped:[/] {warning}")
