"""Plots people would rather look at than read. Headless (Agg); ``ax=None``; return the figure."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib
import numpy as np

matplotlib.use("Agg")  # never needs a display; set before pyplot is imported

import matplotlib.pyplot as plt
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

__all__ = [
    "plot_confusion_matrix",
    "plot_grid_search",
    "plot_image_grid",
    "plot_learning_curves",
    "plot_misclassified",
]


def plot_learning_curves(history: Sequence[dict[str, Any]], axes: Sequence[Any] | None = None
                         ) -> Figure:
    """Train/validation loss and accuracy per epoch, with the stage boundary marked.

    Args:
        history: One dict per epoch with ``stage``, ``train_loss``, ``train_accuracy``,
            ``val_loss``, ``val_accuracy`` (as ``graft finetune`` records them).
        axes: Two matplotlib axes (accuracy, loss) to draw on; new ones if None.
    """
    if axes is None:
        figure, axes = plt.subplots(2, 1, figsize=(8, 7), sharex=True)
    else:
        figure = axes[0].figure
    epochs = list(range(1, len(history) + 1))
    for ax, metric, title in ((axes[0], "accuracy", "Accuracy"), (axes[1], "loss", "Loss")):
        ax.plot(epochs, [h[f"train_{metric}"] for h in history], marker="o", label="training")
        ax.plot(epochs, [h[f"val_{metric}"] for h in history], marker="o", label="validation")
        ax.set_ylabel(title)
        ax.grid(alpha=0.3)
        stages = [h["stage"] for h in history]
        if 2 in stages and 1 in stages:
            boundary = stages.index(2) + 0.5
            ax.axvline(boundary, color="grey", linestyle="--")
            ax.text(boundary, 0.98, " start fine-tuning", transform=ax.get_xaxis_transform(),
                    va="top", color="grey")
        ax.legend(loc="best")
    axes[0].set_title("Training and validation")
    axes[1].set_xlabel("epoch")
    axes[1].xaxis.set_major_locator(MaxNLocator(integer=True))
    figure.tight_layout()
    return figure


def _axes(ax: Any, figsize: tuple[float, float]) -> tuple[Figure, Any]:
    if ax is None:
        figure, ax = plt.subplots(figsize=figsize)
        return figure, ax
    return ax.figure, ax


MAX_MATRIX_CLASSES = 30  # larger confusion matrices show their most confused classes


def most_confused_classes(matrix: np.ndarray, limit: int) -> np.ndarray:
    """Indices of the ``limit`` classes most involved in mistakes (as true or predicted
    class), in their original order."""
    counts = np.asarray(matrix, dtype=float)
    off = counts - np.diag(np.diag(counts))
    involvement = off.sum(axis=0) + off.sum(axis=1)
    return np.sort(np.argsort(-involvement, kind="stable")[:limit])


def plot_confusion_matrix(matrix: Sequence[Sequence[int]], labels: Sequence[str], *,
                          normalize: bool = False, ax: Any = None,
                          max_classes: int = MAX_MATRIX_CLASSES) -> Figure:
    """Heat map of a confusion matrix (rows: true class; ``normalize``: each row sums to 1).

    Over ``max_classes`` classes it shows only the ``max_classes`` most confused ones (rows
    normalized over all predictions), so the figure stays readable at 1,000 classes.
    """
    counts = np.asarray(matrix, dtype=float)
    values = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1) if normalize else counts
    suffix = ""
    if len(labels) > max_classes:
        keep = most_confused_classes(counts, max_classes)
        suffix = f"\n{max_classes} most confused of {len(labels)} classes"
        counts, values = counts[np.ix_(keep, keep)], values[np.ix_(keep, keep)]
        labels = [labels[i] for i in keep]
    size = max(4.0, 0.45 * len(labels) + 2.5)
    figure, ax = _axes(ax, (size + 1, size))
    image = ax.imshow(values, cmap="Blues", vmin=0, vmax=1 if normalize else max(values.max(), 1))
    figure.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
    ax.set_xticks(range(len(labels)), labels, rotation=45, ha="right")
    ax.set_yticks(range(len(labels)), labels)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title("Confusion matrix" + (" (row-normalized)" if normalize else " (counts)") + suffix)
    if len(labels) <= 20:
        threshold = values.max() / 2 if values.size else 0
        for i in range(len(labels)):
            for j in range(len(labels)):
                if counts[i, j] == 0:
                    continue  # a sea of zeros hides the cells that matter
                text = f"{values[i, j]:.2f}" if normalize else f"{int(counts[i, j])}"
                ax.text(j, i, text, ha="center", va="center", fontsize=8,
                        color="white" if values[i, j] > threshold else "black")
    figure.tight_layout()
    return figure


def _thumbnail(path: str | Path, size: int = 224) -> np.ndarray:
    from graft.data.images import load_image

    image = load_image(path, min_size=(size, size))
    image.thumbnail((size, size))
    return np.asarray(image)


def plot_image_grid(paths: Sequence[str | Path], titles: Sequence[str], *, columns: int = 3,
                    figure: Figure | None = None) -> Figure:
    """Images with a title each, in a grid (the Keras tutorial's 3x3 of training images)."""
    rows = max(1, -(-len(paths) // columns))
    figure = figure or plt.figure(figsize=(3.2 * columns, 3.4 * rows))
    for index, (path, title) in enumerate(zip(paths, titles)):
        ax = figure.add_subplot(rows, columns, index + 1)
        ax.imshow(_thumbnail(path))
        ax.set_title(title, fontsize=9)
        ax.axis("off")
    figure.tight_layout()
    return figure


def plot_misclassified(items: Sequence[dict[str, Any]], *, columns: int = 4,
                       figure: Figure | None = None) -> Figure:
    """The worst mistakes: each item has ``path``, ``true``, ``predicted`` and ``score``."""
    titles = [f"true: {item['true']}\npredicted: {item['predicted']} ({item['score']:.2f})"
              for item in items]
    return plot_image_grid([item["path"] for item in items], titles, columns=columns,
                           figure=figure)


def plot_grid_search(cv_results: Sequence[dict[str, Any]], *, ax: Any = None) -> Figure:
    """Cross-validated score against a searched hyper-parameter (log scale), with +-1 std."""
    figure, ax = _axes(ax, (6, 4))
    name = next(iter(cv_results[0]["params"]))
    values = np.array([float(r["params"][name]) for r in cv_results])
    means = np.array([r["mean_test_score"] for r in cv_results])
    stds = np.array([r["std_test_score"] for r in cv_results])
    order = np.argsort(values)
    ax.errorbar(values[order], means[order], yerr=stds[order], marker="o", capsize=3)
    best = int(np.argmax(means))
    ax.scatter([values[best]], [means[best]], s=120, facecolors="none", edgecolors="red",
               label=f"best: {name.split('__')[-1]}={values[best]:g}")
    ax.set_xscale("log")
    ax.set_xlabel(name.split("__")[-1])
    ax.set_ylabel("mean CV accuracy")
    ax.set_title("Grid search (cross-validation on the training split)")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
    figure.tight_layout()
    return figure
