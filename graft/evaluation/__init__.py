"""Evaluation: held-out metrics, reports and plots."""

from graft.evaluation.metrics import compute_metrics, format_report
from graft.evaluation.plots import plot_learning_curves

__all__ = ["compute_metrics", "format_report", "plot_learning_curves"]
