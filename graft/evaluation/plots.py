"""Plots people would rather look at than read. Headless (Agg); ``ax=None``; return the figure."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import matplotlib

matplotlib.use("Agg")  # never needs a display; set before pyplot is imported

import matplotlib.pyplot as plt
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

__all__ = ["plot_learning_curves"]


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
