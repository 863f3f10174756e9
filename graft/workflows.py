"""The jobs graft does, as library functions: extract, train, evaluate, predict.

Each stage lives in its own subpackage; these functions only wire them together. The CLI and the
HTTP server are thin layers over them.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from graft.backbones import (
    DEFAULT_BACKBONE,
    Backbone,
    create_backbone,
    parse_backbone_names,
    per_backbone,
)
from graft.bundle import Prediction, Predictor, save_model
from graft.data import assign_splits, compute_splits, iter_image_files, scan_dataset
from graft.data.augment import parse_augment
from graft.errors import ConfigError, DataError
from graft.evaluation import compute_metrics, format_report, write_report
from graft.features import (
    ExtractionReport,
    FeatureSet,
    create_engine,
    extract_feature_set,
    extract_to_file,
    extract_views,
    load_feature_file,
)
from graft.features.engine import FeatureEngine, OnnxEngine, export_backbone_onnx
from graft.heads import (
    DEFAULT_HEAD,
    create_head,
    describe_head,
    head_to_onnx,
    select_head,
)

__all__ = ["EvaluateResult", "TrainResult", "evaluate", "extract", "predict", "train"]

Log = Callable[[str], None]


def _silent(_: str) -> None:
    pass


def _record_weights(config: dict[str, Any], weights: str | None) -> dict[str, Any]:
    """Add where the weights came from, as something ``create_backbone`` takes again."""
    if weights is None or weights == "random" or weights.startswith(("http://", "https://")):
        config["weights"] = weights
    else:
        config["weights"] = str(Path(weights).expanduser().resolve())
    return config


def _build(
    backbone: str | Sequence[str] | None,
    *,
    layer: str | Sequence[str] | None,
    weights: str | os.PathLike | Sequence[str] | None,
    pool: str,
    image_size: int | None,
    device: str,
    cache_dir: str | os.PathLike | None,
    batch_size: int,
) -> tuple[list[Backbone], list[FeatureEngine], list[dict[str, Any]]]:
    """The backbones (one, or several fused), their engines and their configs."""
    names = parse_backbone_names(backbone)
    weights_list = per_backbone("weights", weights, names, broadcast=("random",))
    layers = per_backbone("layer", layer, names)
    nets = [create_backbone(name, layer=lay, weights=w, pool=pool, image_size=image_size,
                            cache_dir=cache_dir)
            for name, lay, w in zip(names, layers, weights_list)]
    engines = [create_engine(net, device=device, cache_dir=cache_dir, batch_size=batch_size)
               for net in nets]
    configs = [_record_weights(net.config(), w) for net, w in zip(nets, weights_list)]
    return nets, engines, configs


def _rebuild(stored: list[dict[str, Any]], weights: Any, *, source: Path, device: str,
             cache_dir: str | os.PathLike | None, batch_size: int):
    """The backbones a feature file was extracted with, checked against their weights hashes."""
    names = [config["name"] for config in stored]
    overrides = per_backbone("weights", weights, names, broadcast=("random",))
    nets, engines, configs = [], [], []
    for config, override in zip(stored, overrides):
        chosen = override if override is not None else config.get("weights")
        net = create_backbone(
            config["name"], layer=config["layer"], pool=config.get("pool", "avg"), weights=chosen,
            image_size=config["preprocess"]["input_size"][1], cache_dir=cache_dir,
        )
        if net.weights_sha256 != config["weights_sha256"]:
            raise DataError(
                f"{source} was extracted with other weights for {config['name']} (sha256 "
                f"{config['weights_sha256'][:12]}..., now {net.weights_sha256[:12]}...). "
                f"Pass the same --weights as for 'graft extract'."
            )
        nets.append(net)
        engines.append(create_engine(net, device=device, cache_dir=cache_dir,
                                     batch_size=batch_size))
        configs.append(_record_weights(net.config(), chosen) if override is not None else config)
    return nets, engines, configs


def extract(
    data: str | os.PathLike,
    out: str | os.PathLike,
    *,
    backbone: str | Sequence[str] | None = DEFAULT_BACKBONE,
    layer: str | Sequence[str] | None = None,
    weights: str | os.PathLike | Sequence[str] | None = None,
    pool: str = "avg",
    image_size: int | None = None,
    batch_size: int = 32,
    device: str = "auto",
    cache_dir: str | os.PathLike | None = None,
    test_size: float = 0.2,
    val_size: float = 0.0,
    seed: int = 0,
    group_regex: str | None = None,
    progress: bool = True,
) -> tuple[Path, ExtractionReport]:
    """Extract the features of an image folder (or CSV) into a feature file (HDF5).

    ``backbone`` may fuse several networks (``"vgg16+resnet50"`` or a list): their features are
    concatenated. ``weights`` and ``layer`` then take ``NAME=VALUE`` per backbone.
    """
    dataset = assign_splits(scan_dataset(data), test_size=test_size, val_size=val_size, seed=seed,
                            group_regex=group_regex)
    _, engines, configs = _build(backbone, layer=layer, weights=weights, pool=pool,
                                 image_size=image_size, device=device, cache_dir=cache_dir,
                                 batch_size=batch_size)
    return extract_to_file(dataset, engines, configs, out, cache_dir=cache_dir,
                           batch_size=batch_size, progress=progress)


@dataclass
class TrainResult:
    """What ``train`` produced."""

    model_dir: Path
    metrics: dict[str, Any]
    report: str
    extraction: ExtractionReport | None = None
    head_scores: dict[str, float] = field(default_factory=dict)


def _resplit(features: FeatureSet, test_size: float, val_size: float, seed: int,
             group_regex: str | None) -> FeatureSet:
    given = list(features.split) if features.split_source == "folders" else None
    labels = [features.label_names[i] for i in features.labels]
    features.split = np.array(
        compute_splits(features.paths, labels, given=given, test_size=test_size,
                       val_size=val_size, seed=seed, group_regex=group_regex),
        dtype=object,
    )
    if given is None:
        features.split_source = "hash"
        features.split_params = {"test_size": test_size, "val_size": val_size, "seed": seed,
                                 "group_regex": group_regex}
    return features


def _check_trainable(features: FeatureSet) -> None:
    train_labels = set(np.unique(features.labels[features.split == "train"]).tolist())
    missing = [features.label_names[i] for i in range(len(features.label_names))
               if i not in train_labels]
    if missing:
        raise DataError(
            f"No training images for class(es) {missing}: every class needs images in the "
            f"training split. Add images, or lower --test-size."
        )
    if not np.any(features.split == "test"):
        raise DataError(
            "The held-out test split is empty, so the model cannot be scored honestly. "
            "Use --test-size > 0, or give a test/ (or val/) folder."
        )


def train(
    data: str | os.PathLike,
    *,
    out: str | os.PathLike = "graft-model",
    backbone: str | Sequence[str] | None = DEFAULT_BACKBONE,
    layer: str | Sequence[str] | None = None,
    weights: str | os.PathLike | Sequence[str] | None = None,
    pool: str = "avg",
    image_size: int | None = None,
    head: str = DEFAULT_HEAD,
    test_size: float = 0.2,
    val_size: float = 0.0,
    seed: int = 0,
    group_regex: str | None = None,
    batch_size: int = 32,
    device: str = "auto",
    cache_dir: str | os.PathLike | None = None,
    augment_views: int = 0,
    augment: str = "flip,rotate,crop",
    progress: bool = True,
    log: Log = _silent,
) -> TrainResult:
    """Train a classifier on pretrained features and score it on a held-out split.

    Args:
        data: An image folder (``DATA/<class>/<image>`` or pre-split), a CSV of path,label, or a
            feature file written by :func:`extract`.
        out: The model directory to write.
        head: A head name from ``graft.heads.list_heads()``, or ``"auto"``.
        augment_views: Also extract this many random augmented views (``augment``) of every
            training image and train the head on them too, at cache speed on re-runs. The test
            split is never augmented.

    Returns:
        The model directory, held-out metrics and the printable classification report.
    """
    data = Path(data)
    extraction = None
    augment_spec = parse_augment(augment)
    if augment_views < 0:
        raise ConfigError(f"--augment-views must be >= 0. Got {augment_views!r}.")
    if augment_views and not augment_spec:
        raise ConfigError("--augment-views needs at least one --augment transformation.")
    if data.suffix.lower() in (".h5", ".hdf5"):
        if augment_views:
            raise ConfigError(
                "--augment-views needs the images: train on the image folder, not a feature file."
            )
        features = load_feature_file(data)
        nets, engines, configs = _rebuild(features.backbones, weights, source=data,
                                          device="cpu", cache_dir=cache_dir,
                                          batch_size=batch_size)
        features = _resplit(features, test_size, val_size, seed, group_regex)
    else:
        dataset = assign_splits(scan_dataset(data), test_size=test_size, val_size=val_size,
                                seed=seed, group_regex=group_regex)
        nets, engines, configs = _build(backbone, layer=layer, weights=weights, pool=pool,
                                        image_size=image_size, device=device,
                                        cache_dir=cache_dir, batch_size=batch_size)
        features, extraction = extract_feature_set(
            dataset, engines, configs, cache_dir=cache_dir, batch_size=batch_size,
            progress=progress,
        )
        log(extraction.summary())
    _check_trainable(features)
    X_train, y_train = features.subset("train")
    n_original = len(y_train)
    if augment_views:
        X_views, y_views, view_report = extract_views(
            dataset, engines, views=augment_views, augment=augment_spec, cache_dir=cache_dir,
            batch_size=batch_size, progress=progress,
        )
        log(f"Augmented views ({augment_views} per training image, {','.join(augment_spec)}): "
            + view_report.summary())
        X_train, y_train = np.vstack([X_train, X_views]), np.concatenate([y_train, y_views])
    X_test, y_test = features.subset("test")
    head_scores: dict[str, float] = {}
    head_name = head
    if head == "auto":
        head_name, head_scores = select_head(X_train, y_train, random_state=seed)
        log("Cross-validated accuracy on the training split: "
            + ", ".join(f"{k} {v:.3f}" for k, v in head_scores.items()) + f" -> {head_name}")
    log(f"Training the {head_name} head on {len(y_train)} images...")
    estimator = create_head(head_name, random_state=seed, y=y_train).fit(X_train, y_train)
    head_onnx = head_to_onnx(estimator, X_train.shape[1])
    probabilities = _align(estimator, estimator.predict_proba(X_test), len(features.label_names))
    metrics = compute_metrics(y_test, probabilities, features.label_names)
    metrics["n_train"] = n_original
    if augment_views:
        metrics["augment_views"] = {"views": augment_views, "augment": list(augment_spec),
                                    "n_train_rows": len(y_train)}
    X_val, y_val = features.subset("val")
    metrics["n_val"] = len(y_val)
    if len(y_val):
        val_probs = _align(estimator, estimator.predict_proba(X_val), len(features.label_names))
        metrics["val_accuracy"] = float(np.mean(val_probs.argmax(1) == y_val))
    metrics["skipped"] = [{"path": p, "reason": r} for p, r in features.skipped]
    head_info = {"name": head_name, **describe_head(estimator)}
    if head_scores:
        head_info["auto_cv_scores"] = head_scores
    # The model directory ships each backbone's ONNX graph (exported once, cached by key).
    exported = []
    for index, (net, engine) in enumerate(zip(nets, engines)):
        if isinstance(engine, OnnxEngine):
            exported.append((engine.path, False))
        else:
            path = Path(out) / f".backbone-export-{index}.onnx"
            exported.append((export_backbone_onnx(net, path), True))
    model_dir = save_model(
        out,
        backbone_onnx=[path for path, _ in exported],
        head_onnx=head_onnx,
        labels=features.label_names,
        backbones=configs,
        feature_keys=[engine.key for engine in engines],
        head=head_info,
        metrics=metrics,
        training={
            "data": str(features.root or data),
            "split_source": features.split_source,
            "split_params": features.split_params,
            "counts": features.counts(),
            "n_skipped": len(features.skipped),
        },
    )
    for path, temporary in exported:
        if temporary:
            Path(path).unlink(missing_ok=True)
    root = Path(features.root or ".")
    paths = np.array([str(root / p) for p in features.paths], dtype=object)
    write_report(
        model_dir, title=f"{Path(out).name}: {head_name} on {'+'.join(c['name'] for c in configs)}",
        metrics=metrics, labels=features.label_names, y_true=y_test, probabilities=probabilities,
        test_paths=paths[features.split == "test"],
        config={
            "data": str(features.root or data),
            "backbone": " + ".join(f"{c['name']} ({c['layer']}, {c['num_features']}-d)"
                                   for c in configs),
            "weights": ", ".join(c["weights_source"] for c in configs),
            "input": ", ".join("x".join(map(str, c["preprocess"]["input_size"][1:]))
                               for c in configs),
            "head": head_name,
            **{f"head {k}": v for k, v in head_info.get("best_params", {}).items()},
            "split": (f"given folders ({features.split_source})" if features.split_source
                      == "folders" else f"hash split, test {test_size}, val {val_size}, "
                      f"seed {seed}"),
            "augmented views": augment_views,
        },
        counts=features.counts(),
        train_paths=paths[features.split == "train"], train_labels=features.subset("train")[1],
        cv_results=head_info.get("cv_results"),
    )
    return TrainResult(model_dir=model_dir, metrics=metrics,
                       report=format_report(y_test, probabilities, features.label_names),
                       extraction=extraction, head_scores=head_scores)


def _align(estimator: Any, probabilities: np.ndarray, n_classes: int) -> np.ndarray:
    """Columns in class-index order, even if the estimator saw only some classes."""
    classes = np.asarray(estimator.classes_)
    if len(classes) == n_classes and np.array_equal(classes, np.arange(n_classes)):
        return probabilities
    full = np.zeros((len(probabilities), n_classes), dtype=probabilities.dtype)
    full[:, classes.astype(int)] = probabilities
    return full


@dataclass
class EvaluateResult:
    metrics: dict[str, Any]
    report: str
    extraction: ExtractionReport


def evaluate(
    model_dir: str | os.PathLike,
    data: str | os.PathLike,
    *,
    split: str | None = None,
    batch_size: int = 32,
    cache_dir: str | os.PathLike | None = None,
    report: str | os.PathLike | None = None,
    progress: bool = True,
) -> EvaluateResult:
    """Score a saved model on a labeled image folder (or CSV).

    For pre-split data the ``test`` folder is scored (else ``val``); an unsplit folder is scored
    whole. Features are cached under the model's backbone key, so re-scoring is instant.
    """
    predictor = Predictor(model_dir, batch_size=batch_size)
    dataset = scan_dataset(data)
    if dataset.split_source == "folders":
        present = {s.split for s in dataset.samples}
        chosen = split or ("test" if "test" in present else "val" if "val" in present else "train")
        dataset.samples = [s for s in dataset.samples if s.split == chosen]
    unknown = sorted(set(dataset.classes) - set(predictor.labels))
    if unknown:
        raise DataError(
            f"{data} has classes the model does not know: {unknown}. The model knows "
            f"{predictor.labels}."
        )
    dataset.classes = list(predictor.labels)
    features, extraction = extract_feature_set(
        dataset, predictor.engines, predictor.config["backbones"], cache_dir=cache_dir,
        batch_size=batch_size, progress=progress, min_per_class=0,
    )
    probabilities = predictor.probabilities_from_features(features.features)
    metrics = compute_metrics(features.labels, probabilities, predictor.labels)
    metrics["skipped"] = [{"path": p, "reason": r} for p, r in extraction.failures]
    metrics["data"] = str(dataset.root)
    if report is not None:
        backbones = predictor.config["backbones"]
        write_report(
            report, title=f"{Path(model_dir).name} on {dataset.root.name}", metrics=metrics,
            labels=predictor.labels, y_true=features.labels, probabilities=probabilities,
            test_paths=[str(dataset.root / p) for p in features.paths],
            config={"model": str(model_dir), "data": str(dataset.root),
                    "backbone": " + ".join(f"{b['name']} ({b['layer']})" for b in backbones),
                    "head": predictor.config["head"]["name"]},
            counts=features.counts(),
        )
        metrics_path = Path(report) / "metrics.json"
        metrics_path.write_text(json.dumps(metrics, indent=2) + "\n", encoding="utf-8")
    return EvaluateResult(metrics=metrics,
                          report=format_report(features.labels, probabilities, predictor.labels),
                          extraction=extraction)


def predict(
    model_dir: str | os.PathLike,
    paths: Iterable[str | os.PathLike],
    *,
    top_k: int = 5,
    batch_size: int = 32,
) -> Iterator[Prediction]:
    """Stream top-k predictions for image files and folders (folders are walked lazily)."""
    predictor = Predictor(model_dir, batch_size=batch_size)

    def files() -> Iterator[Path]:
        for path in paths:
            yield from iter_image_files(path)

    return predictor.predict_paths(files(), top_k=top_k)
