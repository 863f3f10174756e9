"""The metrics are plain numpy: the same numbers and report text as scikit-learn, and they import
and run where scikit-learn, matplotlib and torch are not installed."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import numpy as np
import pytest
from sklearn.metrics import (
    accuracy_score,
    classification_report,
    confusion_matrix,
    precision_recall_fscore_support,
    top_k_accuracy_score,
)

from graft.evaluation.metrics import compute_metrics, format_report


def _sklearn_metrics(y_true, probabilities, label_names, top_k=(3, 5)):
    """graft's scikit-learn-based compute_metrics before it became plain numpy."""
    y_pred = probabilities.argmax(axis=1)
    labels = list(range(len(label_names)))
    precision, recall, f1, support = precision_recall_fscore_support(
        y_true, y_pred, labels=labels, zero_division=0)
    metrics = {
        "accuracy": float(accuracy_score(y_true, y_pred)),
        "n_test": len(y_true),
        "classes": list(label_names),
        "per_class": {
            name: {"precision": float(p), "recall": float(r), "f1": float(f), "support": int(s)}
            for name, p, r, f, s in zip(label_names, precision, recall, f1, support)},
        "confusion_matrix": confusion_matrix(y_true, y_pred, labels=labels).tolist(),
    }
    for average in ("macro", "weighted"):
        p, r, f, _ = precision_recall_fscore_support(
            y_true, y_pred, labels=labels, average=average, zero_division=0)
        metrics[f"{average}_avg"] = {"precision": float(p), "recall": float(r), "f1": float(f)}
    for k in top_k:
        if k < len(label_names):
            metrics[f"top_{k}_accuracy"] = float(
                top_k_accuracy_score(y_true, probabilities, k=k, labels=labels))
    return metrics


def _case(name: str, seed: int = 0):
    rng = np.random.default_rng(seed)
    n_classes, n = {"two": (2, 50), "seventeen": (17, 340), "absent": (8, 60),
                    "unpredicted": (6, 90), "one-true-class": (5, 20), "tiny": (4, 3),
                    "long-names": (4, 40)}[name]
    y = rng.integers(0, n_classes, size=n)
    probabilities = rng.dirichlet(np.ones(n_classes), size=n)
    if name == "absent":  # classes 5, 6 and 7 never occur in y_true
        y = rng.integers(0, 5, size=n)
    if name == "one-true-class":
        y[:] = 2
    probabilities[: n // 2] += 0.7 * np.eye(n_classes)[y[: n // 2]]  # better than chance
    if name == "unpredicted":  # classes 0 and 3 are never anyone's argmax
        probabilities[:, [0, 3]] *= 0.001
    probabilities /= probabilities.sum(1, keepdims=True)
    labels = [f"class_{i}" for i in range(n_classes)]
    if name == "long-names":
        labels = ["a", "a very long class name indeed", "ünïcode", "b c"]
    return y, probabilities, labels


CASES = ["two", "seventeen", "absent", "unpredicted", "one-true-class", "tiny", "long-names"]


@pytest.mark.parametrize("name", CASES)
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_compute_metrics_equals_scikit_learn_exactly(name, seed):
    y, probabilities, labels = _case(name, seed)
    top_k = (1, 2, 3, 5)
    ours = compute_metrics(y, probabilities, labels, top_k=top_k)
    expected = _sklearn_metrics(y, probabilities, labels, top_k=top_k if len(labels) > 2 else ())
    if len(labels) == 2:  # scikit-learn rejects 2-column scores for k=1 on binary targets
        expected["top_1_accuracy"] = expected["accuracy"]
    assert ours == expected  # same keys, same floats bit for bit


@pytest.mark.parametrize("name", CASES)
@pytest.mark.parametrize("seed", [0, 1])
def test_format_report_equals_scikit_learn(name, seed):
    y, probabilities, labels = _case(name, seed)
    expected = classification_report(
        y, probabilities.argmax(1), labels=range(len(labels)), target_names=labels, digits=3,
        zero_division=0)
    assert format_report(y, probabilities, labels) == expected


def test_inputs_as_lists_and_float_labels():
    y, probabilities, labels = _case("absent")
    expected = _sklearn_metrics(y, probabilities, labels)
    assert compute_metrics(y.astype(float).tolist(), probabilities.tolist(), labels) == expected
    assert format_report(list(y), probabilities, labels) == format_report(y, probabilities, labels)


def test_metrics_import_and_run_without_scikit_learn_matplotlib_or_torch():
    code = textwrap.dedent("""
        import sys

        BLOCKED = {"sklearn", "matplotlib", "torch", "timm", "skl2onnx", "torchvision"}

        class Block:
            def find_spec(self, name, path=None, target=None):
                if name.partition(".")[0] in BLOCKED:
                    raise ImportError(f"{name} is blocked for this test")
                return None

        sys.meta_path.insert(0, Block())

        import numpy as np
        import graft.evaluation
        from graft.evaluation.metrics import compute_metrics, format_report

        y = np.array([0, 1, 2, 2, 1, 0, 3])
        p = np.eye(4)[[0, 1, 2, 1, 1, 3, 3]] + 0.01
        metrics = compute_metrics(y, p, ["a", "b", "c", "d"])
        assert abs(metrics["accuracy"] - 5 / 7) < 1e-12, metrics
        assert "accuracy" in format_report(y, p, ["a", "b", "c", "d"])
        loaded = sorted(m for m in sys.modules if m.partition(".")[0] in BLOCKED)
        assert not loaded, loaded
        print("ok")
    """)
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"
