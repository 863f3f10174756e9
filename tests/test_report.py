"""Reports a person can open: numbers equal scikit-learn's, the HTML references real figures,
and it renders in a real browser."""

from __future__ import annotations

import json
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from conftest import TINY, make_dataset
from sklearn.metrics import classification_report, confusion_matrix, top_k_accuracy_score

from graft.cli import main
from graft.evaluation import (
    ReportInputs,
    compute_metrics,
    plot_confusion_matrix,
    plot_grid_search,
    plot_learning_curves,
    write_report,
)

PNG = b"\x89PNG\r\n\x1a\n"
TINY_ARGS = ["--backbone", TINY, "--weights", "random", "-q"]


class _Images(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.sources: list[str] = []
        self.headings: list[str] = []
        self._in_h2 = False

    def handle_starttag(self, tag, attrs):
        if tag == "img":
            self.sources.append(dict(attrs)["src"])
        self._in_h2 = tag == "h2"

    def handle_data(self, data):
        if self._in_h2:
            self.headings.append(data)
            self._in_h2 = False


def _parse(report: Path) -> _Images:
    parser = _Images()
    parser.feed(report.read_text(encoding="utf-8"))
    for source in parser.sources:
        figure = report.parent / source
        assert not Path(source).is_absolute() and figure.is_file(), source
        data = figure.read_bytes()
        assert data.startswith(PNG) and len(data) > 2000, source
    return parser


def test_metrics_equal_scikit_learn():
    rng = np.random.default_rng(0)
    labels = ["a", "b", "c", "d", "e", "f"]
    y = rng.integers(0, 6, size=200)
    probabilities = rng.dirichlet(np.ones(6), size=200)
    probabilities[np.arange(100), y[:100]] += 1.0  # better than chance
    probabilities /= probabilities.sum(1, keepdims=True)
    metrics = compute_metrics(y, probabilities, labels)
    expected = classification_report(y, probabilities.argmax(1), labels=range(6),
                                      target_names=labels, output_dict=True, zero_division=0)
    assert metrics["accuracy"] == pytest.approx(expected["accuracy"])
    for name in labels:
        for key in ("precision", "recall", "f1"):
            assert metrics["per_class"][name][key] == pytest.approx(
                expected[name][key if key != "f1" else "f1-score"])
        assert metrics["per_class"][name]["support"] == expected[name]["support"]
    for average in ("macro", "weighted"):
        assert metrics[f"{average}_avg"]["f1"] == pytest.approx(expected[f"{average} avg"]["f1-score"])
    assert metrics["confusion_matrix"] == confusion_matrix(y, probabilities.argmax(1)).tolist()
    assert metrics["top_3_accuracy"] == pytest.approx(top_k_accuracy_score(y, probabilities, k=3))


def test_plot_functions_draw_on_given_axes():
    import matplotlib.pyplot as plt

    figure, ax = plt.subplots()
    assert plot_confusion_matrix([[3, 1], [0, 4]], ["x", "y"], normalize=True, ax=ax) is figure
    figure, ax = plt.subplots()
    results = [{"params": {"C": c}, "mean_test_score": s, "std_test_score": 0.01}
               for c, s in ((0.1, 0.8), (1.0, 0.9), (10.0, 0.85))]
    assert plot_grid_search(results, ax=ax) is figure
    history = [{"stage": s, "train_loss": 1.0 / e, "val_loss": 1.1 / e, "train_accuracy": 0.5,
                "val_accuracy": 0.5} for s, e in ((1, 1), (1, 2), (2, 3))]
    figure, axes = plt.subplots(2, 1)
    assert plot_learning_curves(history, axes=axes) is figure
    plt.close("all")


def test_run_table_shows_settings_as_people_read_them(tmp_path):
    labels = ["cat", "dog", "fox"]
    y = np.array([0, 1, 2, 0, 1, 2])
    probabilities = np.eye(3)[y] * 0.8 + 0.2 / 3  # all correct: no gallery of mistakes to draw
    config = {"backbone": "tiny", "weights": None, "group regex": None, "augment": True,
              "balanced": False, "learning rate": 0.001, "image size": 224, "layers": ["a", "b"],
              "extra": {}}
    report = write_report(tmp_path, ReportInputs(
        title="run", metrics=compute_metrics(y, probabilities, labels), labels=labels, y_true=y,
        probabilities=probabilities, test_paths=[f"{i}.jpg" for i in range(6)], config=config))
    page = report.read_text(encoding="utf-8")
    for raw in (">None<", ">True<", ">False<", ">[", ">{"):
        assert raw not in page
    for setting, shown in (("weights", "\u2014"), ("group regex", "\u2014"), ("augment", "yes"),
                           ("balanced", "no"), ("learning rate", "0.001"), ("image size", "224"),
                           ("layers", "a, b"), ("extra", "\u2014")):
        assert f'<td class="l">{setting}</td><td class="l">{shown}</td>' in page


@pytest.fixture(scope="module")
def trained_report(tmp_path_factory):
    root = tmp_path_factory.mktemp("report")
    data = make_dataset(root / "colors", n_per_class=10)
    model = root / "model"
    assert main(["train", str(data), "--out", str(model), *TINY_ARGS]) == 0
    return data, model


def test_train_writes_a_report(trained_report):
    _, model = trained_report
    parsed = _parse(model / "report.html")
    assert {"Run", "Data", "Per class", "Confusion matrix", "Hyper-parameter search",
            "Training images", "Worst mistakes"} <= set(parsed.headings)
    assert {"confusion_matrix.png", "confusion_matrix_normalized.png", "samples.png",
            "grid_search.png"} <= set(parsed.sources)
    metrics = json.loads((model / "metrics.json").read_text())
    html = (model / "report.html").read_text()
    assert f"{metrics['accuracy']:.3f}" in html
    assert ">None<" not in html


def test_evaluate_report_dir(trained_report, tmp_path):
    data, model = trained_report
    out = tmp_path / "eval-report"
    assert main(["evaluate", str(model), str(data), "--split", "all", "--report", str(out),
                 "-q"]) == 0
    _parse(out / "report.html")
    assert json.loads((out / "metrics.json").read_text())["n_test"] == 30


def test_finetune_report_has_learning_curves(tmp_path):
    data = make_dataset(tmp_path / "colors", n_per_class=8)
    assert main(["finetune", str(data), "--out", str(tmp_path / "ft"), "--backbone", TINY,
                 "--weights", "random", "--epochs", "2", "--fine-tune-epochs", "1",
                 "--batch-size", "8", "--workers", "0", "--augment", "none", "-q"]) == 0
    parsed = _parse(tmp_path / "ft" / "report.html")
    assert "learning_curves.png" in parsed.sources and "Learning curves" in parsed.headings


@pytest.mark.skipif(shutil.which("chromium") is None, reason="Chromium is not installed")
def test_report_renders_in_headless_chromium(trained_report, tmp_path):
    from PIL import Image

    _, model = trained_report
    shot = tmp_path / "report.png"
    subprocess.run(
        ["chromium", "--headless", "--no-sandbox", "--disable-gpu",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--no-first-run", f"--user-data-dir={tmp_path / 'profile'}", "--hide-scrollbars",
         "--window-size=1280,2400", f"--screenshot={shot}",
         (model / "report.html").resolve().as_uri()],
        check=True, capture_output=True, timeout=120,
    )
    pixels = np.asarray(Image.open(shot).convert("L"))
    assert pixels.shape == (2400, 1280)
    # A rendered page, not a blank or error page: text, tables and figures make many shades.
    assert len(np.unique(pixels)) > 50 and pixels.std() > 20


_WRITER_SCRIPT = """
import os, signal, sys
import numpy as np
from graft.evaluation.background import ReportWriter

y = np.repeat(np.arange(3), 10)
p = (0.2 + np.eye(3)[y]) / 1.6  # every image right: no mistakes to show
from graft.evaluation import ReportInputs, compute_metrics
inputs = ReportInputs(title="t", metrics=compute_metrics(y, p, ["a", "b", "c"]),
                      labels=["a", "b", "c"], y_true=y, probabilities=p, test_paths=[],
                      config={"head": "logreg"},
                      cv_results=[{"params": {"C": c}, "mean_test_score": s, "std_test_score": 0.01}
                                  for c, s in ((0.1, 0.5), (1.0, 0.7))])
with ReportWriter() as forked:
    assert forked._executor is not None, "a single-threaded process forks its report worker"
    forked.write(sys.argv[1] + "/forked", inputs)
with ReportWriter(enabled=False) as here:
    assert here._executor is None
    here.write(sys.argv[1] + "/here", inputs)
with ReportWriter() as killed:
    for pid in list(killed._executor._processes):
        os.kill(pid, signal.SIGKILL)
    killed.write(sys.argv[1] + "/killed", inputs)  # drawn in this process instead
"""


def test_the_report_worker_writes_what_this_process_would(tmp_path):
    import sys

    subprocess.run([sys.executable, "-c", _WRITER_SCRIPT, str(tmp_path)], check=True,
                   timeout=120)
    pages = {name: (tmp_path / name / "report.html").read_text(encoding="utf-8")
             for name in ("forked", "here", "killed")}
    assert pages["forked"] == pages["here"] == pages["killed"]
    for name in pages:
        figures = sorted(p.name for p in (tmp_path / name).glob("*.png"))
        assert figures == ["confusion_matrix.png", "confusion_matrix_normalized.png",
                           "grid_search.png"]
        _parse(tmp_path / name / "report.html")


def test_a_report_at_1000_classes_stays_readable(tmp_path):
    from graft.evaluation.report import confused_pairs

    rng = np.random.default_rng(0)
    labels = [f"class{i:04d}" for i in range(1000)]
    y = np.repeat(np.arange(1000), 3)
    probabilities = np.full((3000, 1000), 0.1 / 999, dtype=np.float32)
    predicted = np.where(rng.random(3000) < 0.8, y, rng.integers(0, 1000, 3000))
    predicted[:3] = 7  # class 0 always taken for class 7: the top pair
    probabilities[np.arange(3000), predicted] = 0.9
    metrics = compute_metrics(y, probabilities, labels)
    figure = plot_confusion_matrix(metrics["confusion_matrix"], labels)
    width, height = figure.get_size_inches()
    assert width < 20 and height < 20 and "30 most confused of 1000" in figure.axes[0].get_title()
    pairs = confused_pairs(metrics["confusion_matrix"], labels)
    assert pairs[0] == {"true": "class0000", "predicted": "class0007", "count": 3, "share": 1.0}
    from PIL import Image

    Image.new("RGB", (32, 32), (200, 40, 40)).save(tmp_path / "img.png")
    report = write_report(tmp_path / "report", ReportInputs(
        title="big", metrics=metrics, labels=labels, y_true=y, probabilities=probabilities,
        test_paths=[tmp_path / "img.png"] * 3000, config={}))
    text = report.read_text(encoding="utf-8")
    assert "Most confused pairs" in text and "class0007" in text
    for name in ("confusion_matrix.png", "confusion_matrix_normalized.png"):
        assert (tmp_path / "report" / name).stat().st_size < 2_000_000
