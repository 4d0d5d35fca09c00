"""Per-metric leaderboard plots (SVG): ours per category and method as bars, the paper's number as ticks."""

from __future__ import annotations

import io
from pathlib import Path

from anobench.io import atomic_write_text
from anobench.results.leaderboard import METRIC_TITLES, Leaderboard
from anobench.results.render import metric_tables

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
                    value = cell.mean if cell is not None else None
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
