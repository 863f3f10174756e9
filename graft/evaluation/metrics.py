"""Honest scores on held-out data: accuracy, top-k, per-class precision/recall/F1, confusion matrix.

Plain numpy, so evaluating and predicting need neither scikit-learn nor matplotlib. The numbers and
the report text are those of scikit-learn's ``precision_recall_fscore_support``,
``top_k_accuracy_score`` and ``classification_report(digits=3, zero_division=0)``, computed with
the same operations in the same order so that the floats are identical, not just close.
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["compute_metrics", "format_report"]


def _counts(y_true: np.ndarray, y_pred: np.ndarray, n_classes: int) -> tuple[np.ndarray, ...]:
    """Per class: true positives, predicted count, true count (only classes ``0..n_classes-1``)."""
    tp = np.bincount(y_pred[(y_true == y_pred) & (y_pred >= 0) & (y_pred < n_classes)],
                     minlength=n_classes)[:n_classes]
    pred = np.bincount(y_pred[(y_pred >= 0) & (y_pred < n_classes)], minlength=n_classes)
    true = np.bincount(y_true[(y_true >= 0) & (y_true < n_classes)], minlength=n_classes)
    return tp, pred[:n_classes], true[:n_classes]


def _divide(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
    # zero_division=0: an undefined score (nothing predicted, or no true sample) counts as 0.
    denominator = np.asarray(denominator, dtype=np.float64).copy()
    zero = denominator == 0
    denominator[zero] = 1
    result = np.asarray(numerator, dtype=np.float64) / denominator
    result[zero] = 0.0
    return result


def _prf(tp: np.ndarray, pred: np.ndarray, true: np.ndarray) -> tuple[np.ndarray, ...]:
    precision = _divide(tp, pred)
    recall = _divide(tp, true)
    f1 = _divide(2.0 * tp.astype(np.float64), 1.0 * true.astype(np.float64) + pred)
    return precision, recall, f1


def _averages(tp: np.ndarray, pred: np.ndarray, true: np.ndarray) -> dict[str, tuple[float, ...]]:
    """``{"micro"|"macro"|"weighted": (precision, recall, f1)}``."""
    averages = {"micro": tuple(
        float(v[0]) for v in _prf(tp.sum(keepdims=True), pred.sum(keepdims=True),
                                  true.sum(keepdims=True)))}
    per_class = _prf(tp, pred, true)
    if len(tp) == 0:
        averages["macro"] = averages["weighted"] = (float("nan"),) * 3
        return averages
    averages["macro"] = tuple(float(np.nanmean(v)) for v in per_class)
    if true.sum() == 0:  # no weights at all: fall back to the plain mean, as scikit-learn does
        averages["weighted"] = tuple(float(np.average(v)) for v in per_class)
    else:
        averages["weighted"] = tuple(float(np.average(v, weights=true)) for v in per_class)
    return averages


def _predictions(y_true: np.ndarray, probabilities: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    y_true = np.asarray(y_true).reshape(-1)
    if y_true.dtype.kind not in "iu":  # float or bool class indices, as numpy arrays often hold
        y_true = y_true.astype(np.int64)
    return y_true, np.asarray(probabilities).argmax(axis=1)


def _top_k_accuracy(y_true: np.ndarray, probabilities: np.ndarray, k: int) -> float:
    # Ties are broken as scikit-learn does: a stable ascending sort, reversed.
    ranked = np.argsort(probabilities, axis=1, kind="mergesort")[:, ::-1][:, :k]
    return float(np.average((ranked == y_true[:, None]).any(axis=1)))


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
    probabilities = np.asarray(probabilities)
    y_true, y_pred = _predictions(y_true, probabilities)
    n_classes = len(label_names)
    tp, pred, true = _counts(y_true, y_pred, n_classes)
    precision, recall, f1 = _prf(tp, pred, true)
    per_class = {
        name: {"precision": float(p), "recall": float(r), "f1": float(f), "support": int(s)}
        for name, p, r, f, s in zip(label_names, precision, recall, f1, true)
    }
    known = (y_true >= 0) & (y_true < n_classes)
    confusion = np.zeros((n_classes, n_classes), dtype=np.int64)
    np.add.at(confusion, (y_true[known], y_pred[known]), 1)
    metrics: dict[str, Any] = {
        "accuracy": float(np.average(y_true == y_pred)),
        "n_test": len(y_true),
        "classes": list(label_names),
        "per_class": per_class,
        "confusion_matrix": confusion.tolist(),
    }
    averages = _averages(tp, pred, true)
    for average in ("macro", "weighted"):
        p, r, f = averages[average]
        metrics[f"{average}_avg"] = {"precision": p, "recall": r, "f1": f}
    for k in top_k:
        if k < n_classes:
            metrics[f"top_{k}_accuracy"] = _top_k_accuracy(y_true, probabilities, k)
    return metrics


def format_report(y_true: np.ndarray, probabilities: np.ndarray, label_names: list[str]) -> str:
    """The classification report: precision/recall/F1 per class, accuracy, averages.

    The same text as scikit-learn's ``classification_report(..., digits=3, zero_division=0)``.
    """
    y_true, y_pred = _predictions(y_true, probabilities)
    names = [str(name) for name in label_names]
    n_classes = len(names)
    tp, pred, true = _counts(y_true, y_pred, n_classes)
    digits = 3
    width = max(max((len(n) for n in names), default=0), len("weighted avg"), digits)
    report = ("{:>{width}s} " + " {:>9}" * 4).format(
        "", "precision", "recall", "f1-score", "support", width=width) + "\n\n"
    row = "{:>{width}s} " + " {:>9.{digits}f}" * 3 + " {:>9}\n"
    for name, p, r, f, s in zip(names, *_prf(tp, pred, true), true):
        report += row.format(name, p, r, f, s, width=width, digits=digits)
    report += "\n"
    support = int(true.sum())
    # Micro-averaged F1 is the accuracy when every true and predicted class is a known class.
    micro_is_accuracy = bool(np.all((y_true >= 0) & (y_true < n_classes)))
    for average, (p, r, f) in _averages(tp, pred, true).items():
        if average == "micro" and micro_is_accuracy:
            report += ("{:>{width}s} " + " {:>9.{digits}}" * 2 + " {:>9.{digits}f} {:>9}\n").format(
                "accuracy", "", "", f, support, width=width, digits=digits)
        else:
            report += row.format(f"{average} avg", p, r, f, support, width=width, digits=digits)
    return report
