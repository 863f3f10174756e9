"""One self-contained HTML report per run: config, scores, confusion matrices, curves, images.

``report.html`` links the PNG figures written beside it (relative paths), so the folder opens
offline and can be copied or zipped whole.
"""

from __future__ import annotations

import html
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import numpy as np

from graft.evaluation.inputs import ReportInputs
from graft.evaluation.plots import (
    plot_confusion_matrix,
    plot_grid_search,
    plot_image_grid,
    plot_learning_curves,
    plot_misclassified,
)
from graft.page import CSS as _CSS
from graft.page import table as _table

__all__ = ["ReportInputs", "confused_pairs", "sample_images", "worst_mistakes", "write_report"]

REPORT_FILE = "report.html"



def worst_mistakes(y_true: np.ndarray, probabilities: np.ndarray, paths: Sequence[str | Path],
                   labels: Sequence[str], limit: int = 12) -> list[dict[str, Any]]:
    """Misclassified images, most confidently wrong first."""
    predicted = probabilities.argmax(1)
    wrong = np.flatnonzero(predicted != y_true)
    wrong = wrong[np.argsort(-probabilities[wrong, predicted[wrong]], kind="stable")][:limit]
    return [{"path": str(paths[i]), "true": labels[int(y_true[i])],
             "predicted": labels[int(predicted[i])], "score": float(probabilities[i, predicted[i]])}
            for i in wrong]


def confused_pairs(matrix: Sequence[Sequence[int]], labels: Sequence[str],
                   limit: int = 20) -> list[dict[str, Any]]:
    """The most frequent mistakes, ``{"true", "predicted", "count", "share"}`` (share: of the
    true class's test images), most frequent first."""
    counts = np.asarray(matrix, dtype=np.int64)
    off = counts.copy()
    np.fill_diagonal(off, 0)
    order = np.argsort(-off, axis=None, kind="stable")[:limit]
    support = counts.sum(axis=1)
    pairs = []
    for flat in order:
        i, j = divmod(int(flat), counts.shape[1])
        if off[i, j] == 0:
            break
        pairs.append({"true": labels[i], "predicted": labels[j], "count": int(off[i, j]),
                      "share": float(off[i, j] / max(support[i], 1))})
    return pairs


def sample_images(paths: Sequence[str | Path], y: Sequence[int], labels: Sequence[str],
                  n: int = 9) -> tuple[list[str], list[str]]:
    """``n`` images spread over the classes (round robin, first images of each class)."""
    by_class: dict[int, list[str]] = {}
    for path, label in zip(paths, y):
        by_class.setdefault(int(label), []).append(str(path))
    chosen: list[tuple[str, str]] = []
    depth = 0
    while len(chosen) < n and any(depth < len(v) for v in by_class.values()):
        for label in sorted(by_class):
            if depth < len(by_class[label]) and len(chosen) < n:
                chosen.append((by_class[label][depth], labels[label]))
        depth += 1
    return [p for p, _ in chosen], [t for _, t in chosen]


def _save(figure, path: Path) -> str:
    # tight_layout already fitted it (no second layout pass); fast PNG compression
    figure.savefig(path, dpi=110, pil_kwargs={"compress_level": 1})
    plt.close(figure)
    return path.name


def _setting(value: Any) -> str:
    """A run setting as a person reads it: unset is a dash, flags are yes/no, floats are short."""
    if value is None or (isinstance(value, (list, tuple, dict)) and not value):
        return "\u2014"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, (list, tuple)):
        return ", ".join(_setting(v) for v in value)
    if isinstance(value, dict):
        return ", ".join(f"{k}={_setting(v)}" for k, v in value.items())
    return str(value)


def _figure(src: str, caption: str) -> str:
    return (f'<figure><img src="{html.escape(src)}" alt="{html.escape(caption)}">'
            f"<figcaption>{html.escape(caption)}</figcaption></figure>")


def write_report(directory: str | os.PathLike, inputs: ReportInputs) -> Path:
    """Write ``report.html`` and its PNG figures into ``directory``; return the HTML path."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    labels = list(inputs.labels)
    files = _draw_figures(directory, inputs, labels)
    sections = [*_summary_sections(inputs, labels), *_detail_sections(inputs, labels, files)]
    title = inputs.title
    page = (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
            f"<title>{html.escape(title)} - graft report</title><style>{_CSS}</style></head>"
            f"<body><main>{''.join(sections)}</main></body></html>\n")
    path = directory / REPORT_FILE
    path.write_text(page, encoding="utf-8")
    return path


def _draw_figures(directory: Path, inputs: ReportInputs, labels: list[str]) -> dict[str, str]:
    """The PNG figures the page links, by section: ``{"cm": "confusion_matrix.png", ...}``."""
    files: dict[str, str] = {}
    cm = inputs.metrics["confusion_matrix"]
    files["cm"] = _save(plot_confusion_matrix(cm, labels), directory / "confusion_matrix.png")
    files["cmn"] = _save(plot_confusion_matrix(cm, labels, normalize=True),
                         directory / "confusion_matrix_normalized.png")
    if inputs.history:
        files["curves"] = _save(plot_learning_curves(inputs.history),
                                directory / "learning_curves.png")
    if len(inputs.train_paths):
        paths, titles = sample_images(inputs.train_paths, inputs.train_labels, labels)
        files["samples"] = _save(plot_image_grid(paths, titles), directory / "samples.png")
    mistakes = worst_mistakes(np.asarray(inputs.y_true), np.asarray(inputs.probabilities),
                              inputs.test_paths, labels)
    if mistakes:
        files["mistakes"] = _save(plot_misclassified(mistakes), directory / "misclassified.png")
    if inputs.cv_results and len(inputs.cv_results) > 1:
        files["grid"] = _save(plot_grid_search(inputs.cv_results), directory / "grid_search.png")
    return files


def _cards(metrics: dict[str, Any]) -> str:
    cards = [("accuracy", metrics["accuracy"]), *(
        (f"top-{k} accuracy", metrics[f"top_{k}_accuracy"]) for k in (3, 5)
        if f"top_{k}_accuracy" in metrics), ("macro F1", metrics["macro_avg"]["f1"]),
        ("test images", metrics["n_test"])]
    if "n_train" in metrics:
        cards.append(("training images", metrics["n_train"]))
    return "".join(
        f'<div class="card"><div class="v">{v:.3f}</div><div class="k">{html.escape(k)}</div></div>'
        if isinstance(v, float) else
        f'<div class="card"><div class="v">{v}</div><div class="k">{html.escape(k)}</div></div>'
        for k, v in cards)


def _summary_sections(inputs: ReportInputs, labels: list[str]) -> list[str]:
    """The heading, the score cards, the run's settings and the images per split."""
    metrics, counts = inputs.metrics, inputs.counts
    sections = [
        f"<h1>{html.escape(inputs.title)}</h1>",
        (f'<p class="sub">Scored on {metrics["n_test"]} held-out images the model never saw in '
         f"training.</p>"),
        f'<div class="cards">{_cards(metrics)}</div>',
        "<h2>Run</h2>",
        _table(["setting", "value"], [[k, _setting(v)] for k, v in inputs.config.items()],
               left=2),
    ]
    if counts:
        splits = [s for s in ("train", "val", "test") if s in counts]
        count_rows = [[c, *(counts[s].get(c, 0) for s in splits)] for c in labels]
        count_rows.append(["total", *(sum(counts[s].values()) for s in splits)])
        sections += ["<h2>Data</h2>", _table(["class", *splits], count_rows)]
    return sections


def _per_class_table(metrics: dict[str, Any]) -> str:
    """Precision, recall and F1 per class, then the averages; weak classes flagged."""
    per_class = metrics["per_class"]
    macro_f1 = metrics["macro_avg"]["f1"]
    rows = [[name, m["precision"], m["recall"], m["f1"], m["support"]]
            for name, m in per_class.items()]
    flags = ["low" if m["f1"] < macro_f1 - 0.1 else "" for m in per_class.values()]
    rows += [["macro avg", *metrics["macro_avg"].values(), metrics["n_test"]],
             ["weighted avg", *metrics["weighted_avg"].values(), metrics["n_test"]]]
    flags += ["", ""]
    return _table(["class", "precision", "recall", "F1", "support"], rows, classes=flags)


def _detail_sections(inputs: ReportInputs, labels: list[str], files: dict[str, str]) -> list[str]:
    """Per-class scores, the confusion matrices, the figures drawn, the worst mistakes."""
    sections = [
        "<h2>Per class</h2>",
        '<p class="sub">Rows in red: F1 more than 0.1 below the macro average.</p>',
        _per_class_table(inputs.metrics),
        "<h2>Confusion matrix</h2>",
        # Side by side while small enough to read; one under the other for many classes.
        (f'<div class="{"row" if len(labels) <= 8 else ""}">'
         + _figure(files["cm"], "counts (rows: true class; empty cells are 0)")
         + _figure(files["cmn"], "row-normalized: the diagonal is each class's recall")
         + "</div>"),
    ]
    pairs = confused_pairs(inputs.metrics["confusion_matrix"], labels)
    if pairs and len(labels) > 2:
        sections += [
            "<h2>Most confused pairs</h2>",
            '<p class="sub">share: of the true class\'s test images.</p>',
            _table(["true class", "predicted as", "images", "share"],
                   [[p["true"], p["predicted"], p["count"], p["share"]] for p in pairs],
                   left=2)]
    for key, heading, caption in _FIGURE_SECTIONS:
        if key in files:
            sections += [f"<h2>{heading}</h2>", _figure(files[key], caption)]
    sections.append("<h2>Worst mistakes</h2>")
    sections.append(_figure(files["mistakes"], "misclassified test images, most confident first")
                    if "mistakes" in files else '<p class="sub">No test image was misclassified.</p>')
    return sections


# The optional figures, in page order: (file key, heading, caption).
_FIGURE_SECTIONS = (
    ("curves", "Learning curves", "training and validation, per epoch"),
    ("grid", "Hyper-parameter search", "mean cross-validated accuracy, +-1 std"),
    ("samples", "Training images", "a sample of the training set with its labels"),
)
