"""``graft evaluate``: score a saved model honestly.

On the data the model was trained on, only its held-out test split is scored (recomputed from
the split parameters in ``graft.json``), and the console says so. Whatever the data, evaluation
images whose content the model was trained on are counted (``overlap_with_training``), so a leak
is never silent. Imports only the lean runtime (no torch, no scikit-learn).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from graft.bundle.config import ModelConfig, TrainingSpec
from graft.catalog import EVALUATE_SPLITS
from graft.config import EvaluateConfig, resolve_config
from graft.data import assign_splits, scan_dataset
from graft.data.contents import read_content_hashes
from graft.data.dataset import DatasetStream, folder_layout, local_folder, stream_dataset
from graft.data.storage import basename, is_uri, join
from graft.errors import ConfigError, DataError, Note
from graft.evaluation.metrics import compute_metrics, format_report
from graft.features import ExtractionReport, extract_feature_set
from graft.features.store import FeatureSet, in_chunks
from graft.inference.predictor import Predictor, load
from graft.workflows._common import Log, silent

__all__ = ["EVALUATE_SPLITS", "EvaluateConfig", "EvaluateResult", "evaluate"]


@dataclass
class EvaluateResult:
    """What :func:`evaluate` scored, and how."""

    metrics: dict[str, Any]
    report: str
    extraction: ExtractionReport
    split: str
    note: str


def evaluate(
    model_dir: str | os.PathLike,
    data: str | os.PathLike,
    config: EvaluateConfig | None = None,
    *,
    progress: bool = True,
    log: Log = silent,
    **options: Any,
) -> EvaluateResult:
    """Score a saved model on a labeled image folder (or CSV).

    Args:
        model_dir: A model directory from ``graft train`` or ``graft finetune``.
        data: Labeled images: class folders, pre-split folders or a CSV.
        config: An :class:`EvaluateConfig` (the split to score, the report, how to run);
            keyword ``options`` (its field names, e.g. ``split="all"``) override its fields.
        progress: Show progress bars.
        log: Where the note on what is scored (and any overlap warning) goes.

    Returns:
        Metrics (``overlap_with_training`` included), the printable report, the extraction
        summary, the split scored and a one-line note saying what was scored.
    """
    config = resolve_config(EvaluateConfig, config, options).validate()
    if config.report is not None:
        from graft.extras import require

        # before any work, not after; "report" would name the extra too, so no parameter
        require("report", "matplotlib", "evaluate's HTML report")
    predictor = load(model_dir, threads=config.threads, batch_size=config.batch_size)
    dataset, split, note = _choose_split(data, predictor.config, config.split,
                                         cache_dir=config.cache_dir, progress=progress)
    log(note)
    _check_classes(dataset, predictor, data)
    dataset = replace(dataset, classes=list(predictor.labels))
    features, extraction = _features(dataset, predictor, config, data, progress)
    probabilities = in_chunks(predictor.probabilities_from_features, features.features)
    metrics = _metrics(predictor, dataset, features, extraction, probabilities, split, log)
    if config.report is not None:
        _write_report(config.report, predictor, dataset, features, probabilities, metrics,
                      model_dir)
    predictor.close()  # scored: its ONNX Runtime worker threads are done
    return EvaluateResult(metrics=metrics,
                          report=format_report(features.labels, probabilities, predictor.labels),
                          extraction=extraction, split=split, note=note)


def _features(dataset: DatasetStream, predictor: Predictor, config: EvaluateConfig, data: Any,
              progress: bool) -> tuple[Any, ExtractionReport]:
    """The features of the images to score; they stay in the cache, for the head to read a
    chunk at a time."""
    features, extraction = extract_feature_set(
        dataset, predictor.engines, [b.to_dict() for b in predictor.config.backbones],
        cache_dir=config.cache_dir, batch_size=config.batch_size,
        workers=predictor.threads.decode, progress=progress, min_per_class=0,
        engine=config.engine, address=config.address, out_of_core=True,
    )
    if len(features.labels) == 0:
        raise DataError(
            f"None of the {len(dataset)} images to score could be read "
            f"({len(extraction.failures)} skipped, e.g. {extraction.failures[0][0]}: "
            f"{extraction.failures[0][1]})." if extraction.failures else
            f"No images to score in {data}.")
    return features, extraction


def _metrics(predictor: Predictor, dataset: DatasetStream, features: Any,
             extraction: ExtractionReport, probabilities: np.ndarray, split: str,
             log: Log) -> dict[str, Any]:
    """The metrics, what was skipped, and how many scored images the model was trained on."""
    metrics = compute_metrics(features.labels, probabilities, predictor.labels)
    metrics["split"] = split
    metrics["skipped"] = [{"path": p, "reason": r} for p, r in extraction.failures]
    metrics["data"] = str(dataset.root)
    metrics["overlap_with_training"] = _overlap(predictor, features, predictor.threads.cpus)
    overlap = metrics["overlap_with_training"]
    if overlap:
        log(f"Warning: {overlap} of the {len(features.paths)} scored images are also in the "
            f"model's training data (same file content): the score is inflated by them.")
    return metrics


def _same_data(data: Path | str, training: TrainingSpec, root: Path | str) -> bool:
    """Is ``data`` what the model was trained on (the same folder, CSV or URI)?"""
    source = training.source
    if source and (is_uri(source) or Path(source).suffix.lower() not in (".h5", ".hdf5")):
        if is_uri(data) or is_uri(source):
            return str(data).rstrip("/") == str(source).rstrip("/")
        return data.expanduser().resolve() == Path(source)
    # Trained from a feature file (or an older model): its images' folder or URI.
    recorded = training.data
    if not recorded:
        return False
    if is_uri(recorded) or is_uri(root):
        return str(recorded).rstrip("/") == str(root).rstrip("/")
    return Path(recorded) == root


def _choose_split(data: str | os.PathLike, config: ModelConfig, split: str | None, *,
                  cache_dir: str | os.PathLike | None, progress: bool
                  ) -> tuple[DatasetStream, str, str]:
    """The images to score: a folder is listed as it is read (again for each step), a CSV or
    remote storage once, whole."""
    where_from = data if is_uri(data) else Path(data)
    folder = local_folder(data, cache_dir=cache_dir, progress=progress)
    held = None if folder is not None else scan_dataset(data, cache_dir=cache_dir,
                                                        progress=progress)

    def listing(params: dict[str, Any] | None) -> DatasetStream:
        """The data split by ``params`` (None: only the splits the data itself gives)."""
        if held is not None:
            return DatasetStream.of(held if params is None else assign_splits(held, **params))
        return stream_dataset(folder, assign=params is not None, **(params or {}))

    # where the data is and whether it has split folders: no listing needed for a folder
    if held is not None:
        root, presplit = held.root, held.split_source == "folders"
    else:
        root, presplit = folder, folder_layout(folder) == "presplit"
    same = _same_data(where_from, config.training, root)
    if split is None:
        split = "test" if same or presplit else "all"
    if split == "all":
        dataset = listing(None)
        note = f"Scoring all {len(dataset)} images of {data}"
        if same:
            note += (" - this is the model's training data, so training images are scored too "
                     "and the score is inflated; the default, split='test', scores only the "
                     "held-out ones")
        return dataset, split, Note(note + ".", parameter="split")
    if same:
        dataset = listing(config.split.params)
        where = ("the model's held-out split of its training data, recomputed from the split "
                 "parameters in graft.json")
    elif presplit:
        dataset = listing({})
        where = "from the data's split folders (with only train/val folders, val is the test)"
    else:
        raise ConfigError(
            f"{data} has no train/val/test folders and is not the data this model was trained "
            f"on, so it has no {split!r} images. Score it whole with split='all' (the default "
            f"for it).", parameter="split"
        )
    total, chosen = len(dataset), dataset.only(split)
    if not len(chosen):
        hint = (" With only train/val folders, the val folder is scored as 'test'."
                if split == "val" and not same else "")
        raise DataError(f"{data} holds no {split!r} images. Choose another split.{hint}",
                        parameter="split")
    # the word "split" is English here too, so the option is named in words, not as a Note
    note = (f"Scoring the {split} split: {len(chosen)} of {total} images ({where}); the split "
            f"option ({', '.join(EVALUATE_SPLITS)}) chooses.")
    return chosen, split, note


def _check_classes(dataset: DatasetStream, predictor: Predictor, data: Any) -> None:
    unknown = sorted(set(dataset.classes) - set(predictor.labels))
    if unknown:
        raise DataError(
            f"{data} has classes the model does not know: {unknown}. The model knows "
            f"{predictor.labels}."
        )


def _overlap(predictor: Predictor, features: FeatureSet, workers: int) -> int | None:
    """How many scored images the model was trained on, by file content (None: not recorded)."""
    entry = predictor.config.content_hashes_file
    if entry is None:
        return None
    seen = read_content_hashes(predictor.model_dir / entry.path)
    scored = features.read_content_hashes(workers=workers)
    return int(np.count_nonzero(np.isin(scored, seen)))


def _write_report(directory: str | os.PathLike, predictor: Predictor, dataset: DatasetStream,
                  features: Any, probabilities: np.ndarray, metrics: dict[str, Any],
                  model_dir: str | os.PathLike) -> None:
    from graft.bundle.model import write_metrics
    from graft.evaluation import ReportInputs, write_report

    backbones = predictor.config.backbones
    write_report(directory, ReportInputs(
        title=f"{Path(model_dir).name} on {basename(dataset.root)}", metrics=metrics,
        labels=predictor.labels, y_true=features.labels, probabilities=probabilities,
        test_paths=[join(dataset.root, p) for p in features.paths],
        config={"model": str(model_dir), "data": str(dataset.root),
                "split": metrics["split"],
                "backbone": " + ".join(f"{b.name} ({b.layer})" for b in backbones),
                "head": predictor.config.head.name},
        counts=features.counts(),
    ))
    write_metrics(directory, metrics)
