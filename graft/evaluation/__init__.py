"""Evaluation: held-out metrics, plots and the HTML report.

The metrics need only numpy. The plots and the report need matplotlib, which is imported the
first time one of them is used (PEP 562), so evaluating and predicting work without it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from graft._lazy import lazy_exports
from graft.evaluation.metrics import compute_metrics, format_report

if TYPE_CHECKING:
    from graft.evaluation.plots import (
        plot_confusion_matrix,
        plot_grid_search,
        plot_image_grid,
        plot_learning_curves,
        plot_misclassified,
    )
    from graft.evaluation.inputs import ReportInputs
    from graft.evaluation.report import write_report

__all__ = [
    "ReportInputs",
    "compute_metrics",
    "format_report",
    "plot_confusion_matrix",
    "plot_grid_search",
    "plot_image_grid",
    "plot_learning_curves",
    "plot_misclassified",
    "write_report",
]

_LAZY = {
    "ReportInputs": "graft.evaluation.inputs",
    "plot_confusion_matrix": "graft.evaluation.plots",
    "plot_grid_search": "graft.evaluation.plots",
    "plot_image_grid": "graft.evaluation.plots",
    "plot_learning_curves": "graft.evaluation.plots",
    "plot_misclassified": "graft.evaluation.plots",
    "write_report": "graft.evaluation.report",
}


__getattr__, __dir__ = lazy_exports(__name__, _LAZY)
