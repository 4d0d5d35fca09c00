"""Leaderboard rendering: markdown, CSV, console (rich) and HTML tables from an aggregated Leaderboard.

`format_value` is the one number formatter of the results layer (leaderboard, reproduce, expected ranges).
Nothing here knows a method by name: per-method text (the papers' protocols) comes from paper_numbers.yaml
through `Leaderboard.protocols`.
"""

from __future__ import annotations

import csv
import html
import io
import math
from typing import Any, Callable, Iterable

from anobench.results.leaderboard import METRIC_TITLES, AnyCell, Leaderboard, MeanCell, method_label
from anobench.results.record import RUNNING

PAPER_BUDGET = "paper"
# `anobench eval ... weights.released=<file>`: the authors' own trained weights evaluated by anobench at the
# paper's evaluation settings; marked ‡ (compared with the paper by `anobench reproduce`, never a training reproduction)
RELEASED_BUDGET = "paper (released weights)"
RELEASED_MARK = "‡"
NOT_COMPUTED = "n/a"  # a metric the run recorded as null (not computed: the dataset has no ground-truth masks)
NOT_COMPUTED_NOTE = (f"`{NOT_COMPUTED}` = not computed: the dataset has no ground-truth masks, so no pixel metrics "
                     f"(null in result.json); a mean row with an `{NOT_COMPUTED}` category is `{NOT_COMPUTED}`.")


def format_value(value: float | None, digits: int = 3, *, missing: str = "", signed: bool = False) -> str:
    """A metric value (a fraction) as text: `digits` decimals (`signed`: always a sign), `missing` for None/NaN.

    The leaderboard leaves a missing value empty; the reproduce check prints it as `missing="—"`."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return missing
    return f"{value:{'+' if signed else ''}.{digits}f}"


def cell_text(cell: AnyCell | None) -> str:
    """One leaderboard cell: `mean ± std (n seeds, k failed)`, a mean row's `mean (n/m)`, `failed`; † when not
    (only) the paper's budget, ‡ when (partly) from the authors' released weights; `n/a`: not computed."""
    if cell is None:
        return ""
    if cell.all_failed:
        return "failed"
    if cell.not_computed:
        return NOT_COMPUTED
    text = format_value(cell.mean)
    if isinstance(cell, MeanCell):
        if text and cell.n < cell.of:
            text += f" ({cell.n}/{cell.of})"
    else:
        if cell.std is not None:
            text += f" ± {format_value(cell.std)}"
        notes = [f"{cell.n_seeds} seeds"] if cell.std is not None else []
        if cell.failed:
            notes.append(f"{cell.failed} failed")
        if notes:
            text += f" ({', '.join(notes)})"
    if text and cell.budgets and not cell.budgets <= {PAPER_BUDGET, RELEASED_BUDGET}:
        text += "†"
    elif text and RELEASED_BUDGET in cell.budgets:
        text += RELEASED_MARK
    return text


def metric_cell_text(row: dict[str, Any], method: str, metric: str) -> str:
    """One cell of a per-metric table: ours, then `(paper x)` when the paper reports a number there."""
    text = cell_text(row.get((method, metric)))
    paper = row.get((method, metric, "paper"))
    if paper is not None:
        text = f"{text} (paper {format_value(paper)})" if text else f"– (paper {format_value(paper)})"
    return text


def metric_tables(board: Leaderboard, only: set[tuple] | None = None
                  ) -> Iterable[tuple[str, str, list[str], list[tuple[dict[str, Any], list[str]]]]]:
    """The papers' form: per dataset and metric (the board's `metrics`: the three main ones unless it was built
    with others), (dataset, metric, methods, [(row, cells)]) with categories as rows (then the mean rows) and
    methods as columns. `only`: keep these (dataset, category) rows and no mean row (a run's own rows, not a
    mean over categories it did not run)."""
    for dataset in dict.fromkeys(r["dataset"] for r in board.rows):
        rows = [r for r in board.rows if r["dataset"] == dataset
                and (only is None or (r["kind"] != "mean" and (dataset, r["category"]) in only))]
        if not rows:
            continue
        for metric in board.metrics:
            methods = [m for m in board.methods if any(r.get((m, metric)) is not None for r in rows)]
            if methods:
                yield dataset, metric, methods, [(r, [metric_cell_text(r, m, metric) for m in methods]) for r in rows]


def has_not_computed(board: Leaderboard) -> bool:
    """Whether any cell of the board is `n/a` (then the legend explains it; boards without one read as before)."""
    return any(getattr(row.get((method, metric)), "not_computed", False)
               for row in board.rows for method in board.methods for metric in board.metrics)


def has_released(board: Leaderboard) -> bool:
    """Whether any run of the board evaluated a paper's released weights (then the legend explains ‡)."""
    return any(RELEASED_BUDGET in getattr(row.get((method, metric)), "budgets", ())
               for row in board.rows for method in board.methods for metric in board.metrics)


RELEASED_NOTE = (f"{RELEASED_MARK} = the paper authors' released weights evaluated by anobench (`anobench eval ... "
                 "weights.released=<file>`): checks their model under our evaluation, **not a reproduction of "
                 "training**.")


def protocol_lines(board: Leaderboard) -> list[str]:
    """`method: the paper's protocol` for every method on the board that paper_numbers.yaml gives one."""
    return [f"{method}: {note}" for method, note in sorted(board.protocols.items())]


def _columns(board: Leaderboard) -> list[tuple]:
    """The CSV's columns: per method and metric (the board's `metrics`) ours, then the paper's where a paper
    reports one."""
    cols: list[tuple] = []
    for method in board.methods:
        for metric in board.metrics:
            cols.append((method, metric))
            if any(r.get((method, metric, "paper")) is not None for r in board.rows):
                cols.append((method, metric, "paper"))
    return cols


def to_csv(board: Leaderboard) -> str:
    """leaderboard.csv: one line per row; per method and metric ours (mean, std, n, budgets), then the paper's."""
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
                line.append(format_value(cell))
            elif cell is None:
                line += ["", "", 0, ""]
            else:  # a mean row's count is its categories with a value; it has no std
                mean = "failed" if cell.all_failed else NOT_COMPUTED if cell.not_computed else format_value(cell.mean)
                line += [mean, format_value(cell.std), cell.count, ";".join(sorted(cell.budgets))]
        writer.writerow(line)
    return out.getvalue()


def to_markdown(board: Leaderboard, source: str) -> str:
    """leaderboard.md: a header saying how to read it, one table per dataset and metric, the runs, skipped files."""
    notes = protocol_lines(board)
    below = ", each paper's protocol is listed below" if notes else ""
    lines = [
        "# anobench leaderboard",
        "",
        f"Rebuilt from {len(board.runs)} result file(s) under `{source}` (next to this file) by anobench; "
        "do not edit by hand. Values are fractions; mean over seeds, `mean ± std (n seeds)` where there are "
        "several (sample std; CSV: `<method>/<metric>/std` and `/n_seeds` columns).",
        "One table per metric (categories as rows, methods as columns); `ours (paper x)`: x is the number the "
        "paper reports (anobench/results/paper_numbers.yaml, with sources); ours are measured at ground-truth "
        f"resolution{below}. "
        "Per-metric plots: [report.html](report.html).",
        "† = not trained with the paper's budget (smoke or reduced run): **not a paper reproduction**.",
        *([RELEASED_NOTE] if has_released(board) else []),
        "`[semi-supervised: …]` columns learned from labelled defect images (test_split: a few test images, "
        "left out of that method's evaluation; synthetic: generator defects only) — not comparable with the "
        "unsupervised columns.",
        "Mean rows average categories; `(n/m)` = only n of m categories have a value. "
        "Runs evaluated at model resolution (`evaluation.resolution=model`) are left out.",
        *([NOT_COMPUTED_NOTE] if has_not_computed(board) else []),
        "Heatmaps, curves and the provenance of every number: [report.html](report.html) (`anobench report`).",
        "",
    ]
    if notes:
        lines += ["What each paper measured (paper_numbers.yaml `protocol`); a paper number measured otherwise "
                  "than ours is not directly comparable:", ""] + [f"- {note}" for note in notes] + [""]
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
        status = run["status"] if run["status"] in ("ok", RUNNING) else \
            f"failed: {(run.get('error') or {}).get('type', '?')}"
        lines.append(
            f"| {method_label(run)} | {run['dataset']} | {run['category']} | {run['seed']} | {status} | "
            f"{budget.get('label', '?')} | {budget.get('global_step', '')} | {device.get('gpu') or device.get('cpu', '')} | "
            f"{(run.get('git_sha') or '')[:12]} | {run.get('finished_at', '')} | `{run.get('_rel_path', run['_path'])}` |")
    if board.warnings:
        lines += ["", "## Skipped files", ""] + [f"- {w}" for w in board.warnings]
    return "\n".join(lines) + "\n"


def print_leaderboard(board: Leaderboard, only: set[tuple] | None = None) -> None:
    """Rich tables, one per dataset and metric (optionally only the rows of `only` (dataset, category)
    keys, without mean rows: a run's own result, not a mean over categories it did not run)."""
    from rich.console import Console
    from rich.table import Table

    console = Console()
    for dataset, metric, methods, rows in metric_tables(board, only=only):
        released = any(RELEASED_MARK in text for _, cells in rows for text in cells)
        marks = "† = not the paper's budget" + (f", {RELEASED_MARK} = authors' released weights" if released else "")
        table = Table(title=f"{dataset}: {METRIC_TITLES[metric]} ({marks})")
        table.add_column("category")
        for method in methods:
            table.add_column(method, justify="right")
        for index, (row, cells) in enumerate(rows):
            following = rows[index + 1][0] if index + 1 < len(rows) else None
            table.add_row(row["category"], *cells,
                          end_section=row["kind"] != "mean" and following is not None and following["kind"] == "mean")
        console.print(table)
    if has_not_computed(board):
        console.print(NOT_COMPUTED_NOTE.replace("`", ""), markup=False)
    for warning in board.warnings:
        Console(stderr=True).print(f"[yellow]skipped:[/] {warning}")


def to_html(board: Leaderboard, row_link: Callable[[str, str], str] | None = None,
            plots: dict[tuple[str, str], str] | None = None) -> str:
    """The same per-metric tables as leaderboard.md, as HTML (for report.html); `row_link(dataset, category)`
    gives a category's in-page anchor; `plots[(dataset, metric)]` a relative link to that metric's plot."""
    if not board.rows:
        return "<p>No results at ground-truth resolution yet.</p>"
    parts = []
    notes = protocol_lines(board)
    if has_not_computed(board):
        parts.append(f"<p class=note>{html.escape(NOT_COMPUTED_NOTE.replace('`', ''))}</p>")
    if notes:
        parts.append("<p class=note>What each paper measured (paper_numbers.yaml <code>protocol</code>; ours: "
                     "ground-truth resolution):</p><ul class=note>"
                     + "".join(f"<li>{html.escape(note)}</li>" for note in notes) + "</ul>")
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
