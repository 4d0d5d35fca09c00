"""Pictures of what a method found: per-run heatmap panels and curves, and a browsable HTML report."""

from anobench.visualize.figures import ColourScale, run_colour_scale, write_run_figures
from anobench.visualize.report import write_report

__all__ = ["ColourScale", "run_colour_scale", "write_report", "write_run_figures"]
