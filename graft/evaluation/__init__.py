"""Evaluation: held-out metrics and reports."""

from graft.evaluation.metrics import compute_metrics, format_report

__all__ = ["compute_metrics", "format_report"]
