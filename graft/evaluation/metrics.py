"""Honest scores on held-out data: accuracy, top-k, per-class precision/recall/F1, confusion matrix."""

from __future__ import annotations

from typing import Any

import numpy as np
from sklearn.metrics import (
    accuracy_score,
    classification_report,
    confusion_matrix,
    precision_recall_fscore_support,
    top_k_accuracy_score,
)

__all__ = ["compute_metrics", "format_report"]


def compute_metrics(
    y_true: np.ndarray,
    probabilities: np.ndarray,
    label_names: list[str],
    *,
    top_k: tuple[int, ...] = (3, 5),
) -> dict[str, Any]:
    """Every number graft reports about predictions, JSON-ready.

    Args:
        y_true: True class indices (into ``label_names``).
        probabilities: (N, C) class probabilities, columns in ``label_names`` order.
        label_names: Class names.
    """
    y_true = np.asarray(y_true)
    probabilities = np.asarray(probabilities)
    y_pred = probabilities.argmax(axis=1)
    labels = list(range(len(label_names)))
    precision, recall, f1, support = precision_recall_fscore_support(
        y_true, y_pred, labels=labels, zero_division=0
    )
    per_class = {
        name: {"precision": float(p), "recall": float(r), "f1": float(f), "support": int(s)}
        for name, p, r, f, s in zip(label_names, precision, recall, f1, support)
    }
    metrics: dict[str, Any] = {
        "accuracy": float(accuracy_score(y_true, y_pred)),
        "n_test": len(y_true),
        "classes": list(label_names),
        "per_class": per_class,
        "confusion_matrix": confusion_matrix(y_true, y_pred, labels=labels).tolist(),
    }
    for average in ("macro", "weighted"):
        p, r, f, _ = precision_recall_fscore_support(
            y_true, y_pred, labels=labels, average=average, zero_division=0
        )
        metrics[f"{average}_avg"] = {"precision": float(p), "recall": float(r), "f1": float(f)}
    for k in top_k:
        if k < len(label_names):
            metrics[f"top_{k}_accuracy"] = float(
                top_k_accuracy_score(y_true, probabilities, k=k, labels=labels)
            )
    return metrics


def format_report(y_true: np.ndarray, probabilities: np.ndarray, label_names: list[str]) -> str:
    """scikit-learn's classification report (precision/recall/F1 per class, accuracy)."""
    return classification_report(
        np.asarray(y_true), np.asarray(probabilities).argmax(axis=1),
        labels=list(range(len(label_names))), target_names=label_names, digits=3, zero_division=0,
    )
