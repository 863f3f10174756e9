"""What a report is drawn from, in a module light enough to import before matplotlib is
(training builds it in the main process; a forked worker draws it)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["ReportInputs"]


@dataclass
class ReportInputs:
    """What one report shows.

    Attributes:
        title: The heading (e.g. the model directory's name).
        metrics: As :func:`graft.evaluation.compute_metrics` returns them.
        labels: Class names, in the order of ``probabilities``' columns.
        y_true, probabilities, test_paths: The scored images (absolute paths or relative to
            the current directory), for the confusion matrix and the gallery of mistakes.
        config: What was run: shown as a table (backbone, cut, head, hyper-parameters...);
            ``None`` shows as a dash, booleans as yes/no.
        counts: ``{split: {class: images}}``.
        train_paths, train_labels: Training images, for the 3x3 sample grid.
        history: Epoch records, for learning curves (fine-tuning).
        cv_results: Grid-search results (``logreg``), for the C vs CV score plot.
    """

    title: str
    metrics: dict[str, Any]
    labels: Sequence[str]
    y_true: np.ndarray
    probabilities: np.ndarray
    test_paths: Sequence[str | Path]
    config: dict[str, Any]
    counts: dict[str, dict[str, int]] | None = None
    train_paths: Sequence[str | Path] = ()
    train_labels: Sequence[int] = ()
    history: Sequence[dict[str, Any]] | None = None
    cv_results: Sequence[dict[str, Any]] | None = None
