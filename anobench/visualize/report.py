"""`anobench report`: one static HTML page per results folder, to browse what every run found.

Why: the leaderboard says how well; the page says where (each run's heatmap panels and curves) and
from what (config, seed, git sha, budget, device of every number). It is a single file with inline
CSS, no scripts and only relative links, so it opens from disk, offline, or from a copied folder.
"""

from __future__ import annotations

import html
import json
import os
import re
from pathlib import Path
from typing import Any
from urllib.parse import quote

import yaml

from anobench.io import atomic_write_text
from anobench.results.leaderboard import Leaderboard, build_leaderboard, collect_results
from anobench.results.render import NOT_COMPUTED, format_value, to_html
from anobench.results.record import METRIC_KEYS, now_iso
from anobench.visualize.figures import CURVES_FILE, FIGURES_DIR, MANIFEST_FILE, PANELS_DIR
from anobench.visualize.plots import write_metric_plots

REPORT_FILE = "report.html"

_STYLE = """
body { font-family: system-ui, sans-serif; margin: 1.5em auto; max-width: 1400px; padding: 0 1em; color: #222; }
h1 { margin-bottom: 0.2em; } h2 { border-bottom: 2px solid #ccc; margin-top: 1.6em; }
h3 { margin-top: 1.4em; background: #eef3f8; padding: 0.3em 0.5em; }
table { border-collapse: collapse; font-size: 0.85em; margin: 0.6em 0; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.5em; text-align: right; }
th { background: #f3f3f3; } td.name, th.name { text-align: left; }
tr.mean td { font-weight: bold; background: #fafafa; }
.run { border: 1px solid #ddd; border-radius: 6px; padding: 0.6em 0.9em; margin: 0.8em 0; }
.run.failed { border-color: #d55; background: #fff5f5; }
.prov td { text-align: left; } .prov th { text-align: left; width: 9em; }
.thumbs { display: flex; flex-wrap: wrap; gap: 0.5em; }
.thumbs figure { margin: 0; font-size: 0.75em; text-align: center; }
.thumbs img { width: 420px; border: 1px solid #ccc; } img.curves { width: 620px; border: 1px solid #ccc; }
img.plot { max-width: 100%; }
pre { background: #f7f7f7; padding: 0.6em; font-size: 0.8em; max-height: 30em; overflow: auto; }
.note { color: #666; font-size: 0.85em; }
"""


def _e(value: Any) -> str:
    return html.escape("" if value is None else str(value))


def _anchor(*parts: str) -> str:
    return "cat-" + re.sub(r"[^A-Za-z0-9_-]+", "-", "-".join(parts))


def _href(target: Path, base: Path) -> str:
    """A relative, URL-quoted link from the report's folder to a local file."""
    return quote(Path(os.path.relpath(target.resolve(), base.resolve())).as_posix())


def run_figures(run_dir: Path) -> tuple[list[dict[str, Any]], Path | None, dict[str, Any]]:
    """(panels, curves file, manifest) of a run; panels listed by figures.json, else by the files present."""
    figures = run_dir / FIGURES_DIR
    manifest: dict[str, Any] = {}
    if (figures / MANIFEST_FILE).is_file():
        try:
            manifest = json.loads((figures / MANIFEST_FILE).read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            manifest = {}
    panels = manifest.get("panels") or [{"file": f"{PANELS_DIR}/{p.name}", "defect_type": p.stem.split("_")[0]}
                                        for p in sorted((figures / PANELS_DIR).glob("*.png"))]
    panels = [p for p in panels if (figures / p["file"]).is_file()]  # never link a missing file
    curves = figures / CURVES_FILE
    return panels, (curves if curves.is_file() else None), manifest


def _leaderboard_html(board: Leaderboard, base: Path) -> str:
    """The per-metric tables (results/render.py renders them, as for leaderboard.md) and a plot per metric."""
    plots = {key: _href(path, base) for key, path in write_metric_plots(board, base).items()}
    return to_html(board, row_link=_anchor, plots=plots)


# Why a run folder has no pictures, where the record does not say: committed folders never hold them.
NO_FIGURES_NOTE = (
    "No figures in this run folder. The panels show dataset images, and MVTec AD is licensed CC BY-NC-SA 4.0, "
    "so figures are never committed to the repository. Regenerate them from the run's checkpoint: "
    "<code>anobench eval checkpoint=&lt;run dir&gt;/checkpoints/last.ckpt visualize.enabled=true</code> "
    "(or train with <code>visualize.enabled=true</code>)."
)


def _provenance_html(record: dict[str, Any], result_path: Path, base: Path) -> str:
    budget = record.get("budget") or {}
    device = record.get("device") or {}
    evaluation = record.get("evaluation") or {}
    rows = [
        ("result file", f"<a href=\"{_href(result_path, base)}\">{_e(result_path.relative_to(base) if result_path.is_relative_to(base) else result_path)}</a>"),
        ("task", _e(record.get("task"))),
        ("seed", _e(record.get("seed"))),
        ("git sha", f"<code>{_e(record.get('git_sha') or 'unknown')}</code>"),
        ("budget", _e(", ".join(f"{k}={v}" for k, v in budget.items() if v is not None) or "unknown")),
        ("device", _e(", ".join(f"{k}={v}" for k, v in device.items() if v is not None) or "unknown")),
        ("evaluation", _e(", ".join(f"{k}={v}" for k, v in evaluation.items() if k != "timings") or "")),
        ("started / finished", _e(f"{record.get('started_at', '?')} / {record.get('finished_at', '?')}")),
        ("command", f"<code>{_e(record.get('command') or '')}</code>"),
    ]
    if record.get("source_checkpoint"):
        rows.insert(2, ("checkpoint", f"<code>{_e(record['source_checkpoint'])}</code>"))
    table = "".join(f"<tr><th>{k}</th><td>{v}</td></tr>" for k, v in rows)
    config = yaml.safe_dump(record.get("config") or {}, sort_keys=False, default_flow_style=False)
    return (f"<table class=prov>{table}</table>"
            f"<details><summary>config (resolved)</summary><pre>{_e(config)}</pre></details>")


def _run_html(record: dict[str, Any], base: Path) -> str:
    result_path = Path(record["_path"])
    run_dir = result_path.parent
    ok = record.get("status") == "ok"
    metrics = record.get("metrics") or {}
    values = ", ".join(f"{k} {format_value(metrics.get(k), missing=NOT_COMPUTED)}" for k in METRIC_KEYS if k in metrics)
    label = (record.get("budget") or {}).get("label", "unknown")
    title = (f"{_e(record.get('method'))} &middot; seed {_e(record.get('seed'))} &middot; {_e(record.get('task'))}"
             f" &middot; budget {_e(label)}")
    status = _e(values) if ok else f"failed: {_e((record.get('error') or {}).get('type'))}: " \
                                     f"{_e((record.get('error') or {}).get('message'))}"
    parts = [f"<div class=\"run{'' if ok else ' failed'}\"><h4>{title}</h4><p>{status}</p>"]
    panels, curves, manifest = run_figures(run_dir)
    if curves is not None:
        href = _href(curves, base)
        parts.append(f"<p><a href=\"{href}\"><img class=curves src=\"{href}\" alt=\"ROC and PRO curves\"></a></p>")
    if panels:
        scale = manifest.get("colour_scale") or {}
        if scale:
            low, high = float(scale.get("vmin", float("nan"))), float(scale.get("vmax", float("nan")))
            parts.append(f"<p class=note>heatmaps share one colour scale for this run: {low:.4g} to {high:.4g} "
                         f"({_e(scale.get('cmap'))})</p>")
        parts.append("<div class=thumbs>")
        for panel in panels:
            href = _href(run_dir / FIGURES_DIR / panel["file"], base)
            caption = panel.get("defect_type", "")
            if panel.get("score") is not None:
                caption += f", score {panel['score']:.4g}"
            parts.append(f"<figure><a href=\"{href}\"><img src=\"{href}\" alt=\"{_e(panel['file'])}\" loading=lazy></a>"
                         f"<figcaption>{_e(caption)}</figcaption></figure>")
        parts.append("</div>")
    if curves is None and not panels:
        figures = record.get("figures") or {}
        if figures.get("error"):
            parts.append(f"<p class=note>{_e(figures['error'])}</p>")
        elif figures.get("enabled") is False:
            parts.append("<p class=note>figures off for this run (visualize.enabled=false, or trainer=smoke); "
                         "draw them with <code>anobench eval checkpoint=&lt;run dir&gt;/checkpoints/last.ckpt "
                         "visualize.enabled=true</code></p>")
        else:
            parts.append(f"<p class=note>{NO_FIGURES_NOTE}</p>")
    parts.append(_provenance_html(record, result_path, base))
    parts.append("</div>")
    return "\n".join(parts)


def render_report(results: list[dict[str, Any]], base: Path, warnings: list[str] | None = None,
                  board: Leaderboard | None = None) -> str:
    """The HTML page for result records (each with ``_path``); links are relative to ``base``."""
    board = build_leaderboard(results, warnings=warnings) if board is None else board
    by_category: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for record in results:
        by_category.setdefault((str(record["dataset"]), str(record["category"])), []).append(record)
    parts = [
        "<!DOCTYPE html><html lang=en><head><meta charset=utf-8>",
        "<meta name=viewport content=\"width=device-width, initial-scale=1\">",
        f"<title>anobench report: {_e(base.name)}</title><style>{_STYLE}</style></head><body>",
        "<h1>anobench report</h1>",
        f"<p class=note>{len(results)} run(s) under <code>runs/</code>, written {_e(now_iso())} by "
        "<code>anobench report</code>; do not edit by hand. † = not the paper's budget (not a reproduction). "
        "The leaderboard keeps the latest result per seed at ground-truth resolution; every run is listed below it.</p>",
        "<h2>Leaderboard</h2>", _leaderboard_html(board, base),
        "<h2>Runs by category</h2>",
    ]
    if by_category:
        toc = ", ".join(f"<a href=\"#{_anchor(*k)}\">{_e(k[0])}/{_e(k[1])}</a>" for k in sorted(by_category))
        parts.append(f"<p>{toc}</p>")
    for key in sorted(by_category):
        parts.append(f"<h3 id=\"{_anchor(*key)}\">{_e(key[0])} / {_e(key[1])}</h3>")
        runs = sorted(by_category[key], key=lambda r: (str(r.get("method")), str(r.get("seed")),
                                                       str(r.get("finished_at", ""))))
        parts.extend(_run_html(r, base) for r in runs)
    if board.warnings:
        parts.append("<h2>Skipped files</h2><ul>" + "".join(f"<li>{_e(w)}</li>" for w in board.warnings) + "</ul>")
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


def write_report(results_dir: str | Path, output: str | Path | None = None,
                 results: list[dict[str, Any]] | None = None, warnings: list[str] | None = None,
                 board: Leaderboard | None = None) -> Path:
    """Write <results_dir>/report.html (or ``output``) from every result file of the folder."""
    results_dir = Path(results_dir)
    if results is None:
        results, warnings = collect_results(results_dir)
    out = Path(output) if output is not None else results_dir / REPORT_FILE
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out, render_report(results, out.parent, warnings, board))
    return out
