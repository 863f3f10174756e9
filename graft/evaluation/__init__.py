"""Evaluation: held-out metrics, plots and the HTML report."""

from graft.evaluation.metrics import compute_metrics, format_report
from graft.evaluation.plots import (
    plot_confusion_matrix,
    plot_grid_search,
    plot_image_grid,
    plot_learning_curves,
    plot_misclassified,
)
from graft.evaluation.report import write_report

__all__ = [
    "compute_metrics",
    "format_report",
    "plot_confusion_matrix",
    "plot_grid_search",
    "plot_image_grid",
    "plot_learning_curves",
    "plot_misclassified",
    "write_report",
]
