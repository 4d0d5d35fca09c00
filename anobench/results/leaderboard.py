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

from anobench.io import atomic_write_text
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
    """The CSV's columns: per method and metric ours, then the paper's where a paper reports one."""
    cols: list[tuple] = []
    for method in board.methods:
        for metric in METRIC_KEYS:
            cols.append((method, metric))
            if any(r.get((method, metric, "paper")) is not None for r in board.rows):
                cols.append((method, metric, "paper"))
    return cols


def metric_cell_text(row: dict[str, Any], method: str, metric: str) -> str:
    """One cell of a per-metric table: ours, then `(paper x)` when the paper reports a number there."""
    text = _cell_text(row.get((method, metric)))
    paper = row.get((method, metric, "paper"))
    if paper is not None:
        text = f"{text} (paper {_fmt(paper)})" if text else f"– (paper {_fmt(paper)})"
    return text


def metric_tables(board: Leaderboard, only: set[tuple] | None = None
                  ) -> Iterable[tuple[str, str, list[str], list[tuple[dict[str, Any], list[str]]]]]:
    """The papers' form: per dataset and metric, (dataset, metric, methods, [(row, cells)]) with categories
    as rows (then the mean rows) and methods as columns. `only`: keep these (dataset, category) rows and
    no mean row (a run's own rows, not a mean over categories it did not run)."""
    for dataset in dict.fromkeys(r["dataset"] for r in board.rows):
        rows = [r for r in board.rows if r["dataset"] == dataset
                and (only is None or (r["kind"] != "mean" and (dataset, r["category"]) in only))]
        if not rows:
            continue
        for metric in METRIC_KEYS:
            methods = [m for m in board.methods if any(r.get((m, metric)) is not None for r in rows)]
            if methods:
                yield dataset, metric, methods, [(r, [metric_cell_text(r, m, metric) for m in methods]) for r in rows]


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
        "One table per metric (categories as rows, methods as columns); `ours (paper x)`: x is the number the "
        "paper reports (anobench/results/paper_numbers.yaml, with sources); Patch SVDD's paper measures pixel "
        "AUROC at 256×256, ours at ground-truth resolution. Per-metric plots: [report.html](report.html).",
        "† = not trained with the paper's budget (smoke or reduced run): **not a paper reproduction**.",
        "`[semi-supervised: …]` columns learned from labelled defect images (test_split: a few test images, "
        "left out of that method's evaluation; synthetic: generator defects only) — not comparable with the "
        "unsupervised columns.",
        "Mean rows average categories; `(n/m)` = only n of m categories have a value. "
        "Runs evaluated at model resolution (`evaluation.resolution=model`) are left out.",
        "Heatmaps, curves and the provenance of every number: [report.html](report.html) (`anobench report`).",
        "",
    ]
    for dataset, metric, methods, rows in metric_tables(board):
        lines += [f"## {dataset}: {METRIC_TITLES[metric]}", "", "| category | " + " | ".join(methods) + " |",
                  "|---|" + "---:|" * len(methods)]
        for row, cells in rows:
            name = f"**{row['category']}**" if row["kind"] == "mean" else row["category"]
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


def write_tables(results_dir: Path, results: list[dict[str, Any]], warnings: list[str]) -> Leaderboard:
    """Write results_dir/leaderboard.{md,csv} (atomically) from result records read from results_dir;
    `anobench.results.publish.write_leaderboard` takes the lock and adds report.html."""
    for record in results:
        record["_rel_path"] = str(Path(record["_path"]).relative_to(results_dir))
    board = build_leaderboard(results, warnings=warnings)
    atomic_write_text(results_dir / "leaderboard.csv", to_csv(board))
    atomic_write_text(results_dir / "leaderboard.md", to_markdown(board, source="runs/"))
    return board


def print_leaderboard(board: Leaderboard, only: set[tuple] | None = None) -> None:
    """Rich tables, one per dataset and metric (optionally only the rows of `only` (dataset, category)
    keys, without mean rows: a run's own result, not a mean over categories it did not run)."""
    from rich.console import Console
    from rich.table import Table

    console = Console()
    for dataset, metric, methods, rows in metric_tables(board, only=only):
        table = Table(title=f"{dataset}: {METRIC_TITLES[metric]} († = not the paper's budget)")
        table.add_column("category")
        for method in methods:
            table.add_column(method, justify="right")
        for index, (row, cells) in enumerate(rows):
            following = rows[index + 1][0] if index + 1 < len(rows) else None
            table.add_row(row["category"], *cells,
                          end_section=row["kind"] != "mean" and following is not None and following["kind"] == "mean")
        console.print(table)
    for warning in board.warnings:
        Console(stderr=True).print(f"[yellow]skipped:[/] {warning}")


def to_html(board: Leaderboard, row_link: Any = None, plots: dict[tuple[str, str], str] | None = None) -> str:
    """The same per-metric tables as leaderboard.md, as HTML (for report.html); `row_link(dataset, category)`
    gives a category's in-page anchor; `plots[(dataset, metric)]` a relative link to that metric's plot."""
    import html

    if not board.rows:
        return "<p>No results at ground-truth resolution yet.</p>"
    parts = []
    for dataset, metric, methods, rows in metric_tables(board):
        head = "".join(f"<th>{html.escape(m)}</th>" for m in methods)
        parts.append(f"<h3>{html.escape(dataset)}: {METRIC_TITLES[metric]}</h3>")
        parts.append(f"<table><tr><th class=name>category</th>{head}</tr>")
        for row, cells in rows:
            tds = "".join(f"<td>{html.escape(c)}</td>" for c in cells)
            name = html.escape(row["category"])
            if row["kind"] == "mean":
                parts.append(f"<tr class=mean><td class=name>{name}</td>{tds}</tr>")
            else:
                if row_link is not None:
                    name = f"<a href=\"#{row_link(dataset, row['category'])}\">{name}</a>"
                parts.append(f"<tr><td class=name>{name}</td>{tds}</tr>")
        parts.append("</table>")
        plot = (plots or {}).get((dataset, metric))
        if plot:
            parts.append(f"<p><img class=plot src=\"{plot}\" alt=\"{html.escape(dataset)} "
                         f"{METRIC_TITLES[metric]} per category and method\"></p>")
    return "\n".join(parts)


PLOTS_DIR = "plots"


def write_metric_plots(board: Leaderboard, folder: Path) -> dict[tuple[str, str], Path]:
    """One SVG per dataset and metric under folder/plots/: ours per category (bars, one per method) and the
    paper's number (black ticks) where a paper reports one. Deterministic (fixed hash salt, no date)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written: dict[tuple[str, str], Path] = {}
    for dataset, metric, methods, rows in metric_tables(board):
        body = [row for row, _ in rows if row["kind"] != "mean"] + [row for row, _ in rows if row["category"] == "Mean"]
        width = 0.8 / max(len(methods), 1)
        with plt.rc_context({"svg.hashsalt": "anobench", "font.size": 8}):
            fig, ax = plt.subplots(figsize=(max(4.0, 0.6 * len(body) * max(1, len(methods)) ** 0.5 + 2), 3.0))
            for j, method in enumerate(methods):
                xs, ys, paper_xs, paper_ys = [], [], [], []
                for i, row in enumerate(body):
                    cell = row.get((method, metric))
                    value = cell.get("mean") if isinstance(cell, dict) else (cell.mean if cell is not None else None)
                    x = i - 0.4 + width * (j + 0.5)
                    if value is not None:
                        xs.append(x)
                        ys.append(value)
                    if row.get((method, metric, "paper")) is not None:
                        paper_xs.append(x)
                        paper_ys.append(row[(method, metric, "paper")])
                ax.bar(xs, ys, width=width * 0.9, label=method)
                if paper_xs:
                    ax.scatter(paper_xs, paper_ys, marker="_", s=120, color="black", zorder=3,
                               label="paper" if "paper" not in ax.get_legend_handles_labels()[1] else None)
            ax.set_xticks(range(len(body)), [r["category"] for r in body], rotation=45, ha="right")
            ax.set_ylim(0.0, 1.02)
            ax.axhline(0.5, color="grey", linewidth=0.6, linestyle=":")
            ax.set_ylabel(METRIC_TITLES[metric])
            ax.set_title(f"{dataset}: {METRIC_TITLES[metric]} († runs are not the paper's budget)")
            ax.legend(fontsize=6, loc="lower right")
            fig.tight_layout()
            buffer = io.StringIO()
            fig.savefig(buffer, format="svg", metadata={"Date": None, "Creator": None})
            plt.close(fig)
        path = folder / PLOTS_DIR / f"{dataset}_{metric}.svg"
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, buffer.getvalue())
        written[(dataset, metric)] = path
    return written
