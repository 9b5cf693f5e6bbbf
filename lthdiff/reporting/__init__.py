"""What a person reads: the HTML/Markdown report, tables, every figure, notebook widgets, a headless browser screenshot."""

from . import figure_base
from .figure_base import axes, close, data_uri, to_png
from . import plots_results
from .plots_results import (classic_accuracy, mask_distance_curve, matching_vs_width, plot_accuracy,
                            quality_vs_sparsity, structured_tickets)
from . import plots
from .plots import (WithStatic, image_panels, loss_curve, sparsity_curve, sparsity_curve_interactive,
                    sparsity_heatmap, with_static)
from . import tables
from .tables import cells, fmt, html_table, markdown_table, md_table, py_value
from . import study
from .study import markdown, study_summary, update_readme
from . import widgets
from . import browser
from .browser import screenshot
from . import report
from .report import ReportPaths, block_sparsity, build, main, read_metrics, results_table, wide_table

__all__ = ["figure_base", "axes", "close", "data_uri", "to_png", "plots_results", "classic_accuracy",
           "mask_distance_curve", "matching_vs_width", "plot_accuracy", "quality_vs_sparsity", "structured_tickets", "plots",
           "WithStatic", "image_panels", "loss_curve", "sparsity_curve", "sparsity_curve_interactive",
           "sparsity_heatmap", "with_static", "tables", "cells", "fmt", "html_table", "markdown_table", "md_table", "py_value",
           "study", "markdown", "study_summary", "update_readme", "widgets", "browser", "screenshot", "report", "ReportPaths", "block_sparsity", "build", "main",
           "read_metrics", "results_table", "wide_table"]
