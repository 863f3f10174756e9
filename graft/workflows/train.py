"""``graft train``: features (cached) -> a head -> a model directory, scored by the saved artifact.

The steps, in order: check the options and the output path; get the features (extracting what
the cache lacks, or reading a feature file); check every class can be learned and tested; add
augmented views; fit the head; write the model directory to a staging folder; load it through
the inference pipeline and score the held-out test split *with the artifact* (checked against
the in-memory head, and end to end from image files on a sample); write the metrics and the
report; move the directory into place.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from graft.bundle.config import BackboneRecipe, HeadSpec, SplitSpec, TrainingSpec
from graft.bundle.model import check_replaceable, staged_model_dir, write_metrics
from graft.catalog import MODEL_PRECISIONS, STREAMING_HEADS
from graft.config import TrainConfig
from graft.data import check_output_dir, compute_splits
from graft.data.dataset import DatasetStream, stream_dataset
from graft.data.storage import is_file, is_uri, join
from graft.errors import ConfigError, DataError, ModelError, Note
from graft.evaluation.background import ReportWriter
from graft.evaluation.inputs import ReportInputs
from graft.evaluation.metrics import compute_metrics, format_report
from graft.features import ExtractionReport, FeatureSet, fused_key
from graft.features.store import in_chunks
from graft.inference.predictor import Predictor, load
from graft.system import ThreadPlan, available_memory, plan_threads
from graft.workflows._common import (
    BuiltBackbone,
    Log,
    build_backbones,
    record_weights,
    set_precision,
    silent,
)

__all__ = ["TrainConfig", "TrainResult", "train"]

# The saved artifact must reproduce the in-memory head's probabilities this closely.
PARITY_TOLERANCE = 1e-4
# Test images also run end to end (file -> saved graphs) to check decoding did not drift.
END_TO_END_SAMPLE = 16


@dataclass
class TrainResult:
    """What :func:`train` produced."""

    model_dir: Path
    metrics: dict[str, Any]
    report: str
    extraction: ExtractionReport | None = None
    head_scores: dict[str, dict[str, float]] = field(default_factory=dict)


@dataclass
class _Run:
    """The state one training run builds up, step by step."""

    config: TrainConfig
    data: Path | str  # a local path, or a URI (s3://...)
    out: Path
    progress: bool
    log: Log
    augment: tuple[str, ...] = ()
    backbones: list[BuiltBackbone] = field(default_factory=list)
    dataset: DatasetStream | None = None  # None when training from a feature file
    features: FeatureSet | None = None
    extraction: ExtractionReport | None = None
    n_original: int = 0
    head_seconds: float = 0.0
    out_of_core: bool = False
    content_hashes: np.ndarray | None = None  # one per feature row (graft.data.contents)
    data_check: dict[str, Any] = field(default_factory=dict)
    plan: ThreadPlan | None = None

    @property
    def n_classes(self) -> int:
        return len(self.features.label_names)

    @property
    def engines(self) -> list[Any]:
        return [backbone.engine for backbone in self.backbones]

    @property
    def recipes(self) -> list[dict[str, Any]]:
        """Each backbone's recipe, as feature files store it."""
        return [backbone.recipe.to_dict() for backbone in self.backbones]


def train(
    data: str | os.PathLike,
    *,
    out: str | os.PathLike = "graft-model",
    config: TrainConfig | None = None,
    progress: bool = True,
    log: Log = silent,
    **options: Any,
) -> TrainResult:
    """Train a classifier on pretrained features and score it on a held-out split.

    Args:
        data: An image folder (``DATA/<class>/<image>`` or pre-split), a CSV of path,label, or a
            feature file written by :func:`graft.extract`.
        out: The model directory to write (replaced only when training succeeds; never inside
            ``data``).
        config: A :class:`TrainConfig`; keyword ``options`` (its field names, e.g.
            ``head="svm"``, ``backbone="mobilenetv2_100"``) override its fields.
        progress: Show progress bars.
        log: Where progress messages go (the CLI passes stderr).

    Returns:
        The model directory, the held-out metrics (computed with the saved model) and the
        printable classification report.

    Raises:
        GraftError: For bad options or data (``ConfigError``, ``DataError``...), and
            ``ModelError`` if the saved model does not reproduce the trained head.
    """
    run = _start(data, out, config, options, progress, log)
    with ReportWriter() as reports:
        _load_features(run)
        _check_trainable(run.features)
        _check_leaks(run)
        X_train, y_train = _training_rows(run)
        estimator, head_name, head_scores = _fit_head(run, X_train, y_train)
        with staged_model_dir(run.out) as staging:
            head_info = _write_model(run, staging, estimator, head_name, head_scores,
                                     X_train.shape[1])
            predictor = load(staging, threads=run.config.threads,
                             batch_size=run.config.batch_size)
            probabilities = _score_with_artifact(run, predictor, estimator)
            metrics = _metrics(run, predictor, probabilities, len(y_train))
            write_metrics(staging, metrics)
            _write_report(run, reports, staging, metrics, probabilities, head_info)
            predictor.close()  # scored: its ONNX Runtime worker threads are done
    _, y_test = run.features.subset("test")
    return TrainResult(model_dir=run.out, metrics=metrics,
                       report=format_report(y_test, probabilities, run.features.label_names),
                       extraction=run.extraction, head_scores=head_scores)


def _start(data: str | os.PathLike, out: str | os.PathLike, config: TrainConfig | None,
           options: dict[str, Any], progress: bool, log: Log) -> _Run:
    """Step 1: resolve and check the options, and where the model goes."""
    known = {f.name for f in dataclasses.fields(TrainConfig)}
    unknown = sorted(set(options) - known)
    if unknown:
        raise ConfigError(f"Unknown training option(s) {unknown}. Known: {sorted(known)}.")
    config = dataclasses.replace(config or TrainConfig(), **options)
    augment = config.validate()
    data = data if is_uri(data) else Path(data).expanduser()
    check_output_dir(out, data)
    check_replaceable(out)
    return _Run(config=config, data=data, out=Path(out), progress=progress, log=log,
                augment=augment, plan=plan_threads(config.threads))


def _load_features(run: _Run) -> None:
    """Step 2: the features of every image, from the cache or extracted now (or a feature file)."""
    from graft.features import extract_feature_set

    cfg, plan = run.config, run.plan
    if not is_uri(run.data) and run.data.suffix.lower() in (".h5", ".hdf5"):
        _from_feature_file(run)
        return
    # a folder of class folders is counted, then read as it is extracted; a CSV or a bucket is
    # listed whole
    run.dataset = stream_dataset(run.data, cache_dir=cfg.cache_dir, progress=run.progress,
                                 **cfg.split_params)
    if run.dataset.split_source == "folders":
        run.log(Note("Using the data's own split folders (with only train/val, val is the "
                     "test); test_size does not apply.", parameter="test_size"))
    run.backbones = build_backbones(
        cfg.backbone, layer=cfg.layer, weights=cfg.weights, pool=cfg.pool,
        image_size=cfg.image_size, device=cfg.device, cache_dir=cfg.cache_dir,
        threads=plan.onnx, engine=cfg.engine, normalize=cfg.normalize, tta=cfg.tta)
    _set_precision(run, run.dataset)
    run.out_of_core = _out_of_core(run)
    run.features, run.extraction = extract_feature_set(
        run.dataset, run.engines, run.recipes, cache_dir=cfg.cache_dir,
        batch_size=cfg.batch_size, workers=plan.decode, progress=run.progress,
        engine=cfg.engine, address=cfg.address, out_of_core=run.out_of_core)
    run.log(run.extraction.summary())


def _from_feature_file(run: _Run) -> None:
    """Step 2 for a feature file from ``graft extract``: its features, split as asked, with
    the backbones it was extracted with (checked against their weights and calibration)."""
    from graft.features import load_feature_file

    cfg = run.config
    if cfg.out_of_core:
        raise ConfigError(
            "out_of_core trains from the feature cache of an image folder: train on the folder "
            "(its features are cached already if 'graft extract' ran on it).",
            parameter="out_of_core")
    if cfg.augment_views:
        raise ConfigError("augment_views needs the images: train on the image folder, not a "
                          "feature file.", parameter="augment_views")
    features = load_feature_file(run.data)
    stored = {b.get("precision", "fp32") for b in features.backbones}
    if not stored <= set(MODEL_PRECISIONS):
        raise ConfigError(
            f"{run.data} holds {'/'.join(sorted(stored))} features (mixed-precision, on a GPU); "
            f"a model directory runs the fp32 (or int8) graph, so training needs those: "
            f"extract it again with precision='fp32'.", parameter="precision")
    if stored != {cfg.precision}:
        raise ConfigError(
            f"{run.data} holds {'/'.join(sorted(stored))} features; train from it with "
            f"precision={'/'.join(sorted(stored))!r}, or extract it again.", parameter="precision")
    run.backbones = _rebuild(run, features.backbones, run.plan.onnx)
    calibration_split = np.array(features.split, copy=True)  # the split extract used
    run.features = _resplit(features, cfg)
    root = features.root or "."
    _set_precision(run, [join(root, p) for p, s in zip(features.paths, calibration_split)
                         if s == "train"])
    if fused_key([engine.key for engine in run.engines]) != features.key:
        raise ConfigError(
            f"{run.data} was extracted with another int8 calibration than its images give now "
            f"(images changed or missing). Extract it again with precision={cfg.precision!r}.",
            parameter="precision")


def _out_of_core(run: _Run) -> bool:
    """Whether the head trains from the cache in chunks: asked for, or the feature matrix would
    take more than half of the memory available (then said so)."""
    cfg = run.config
    if cfg.out_of_core is not None:
        return cfg.out_of_core
    needed = len(run.dataset) * sum(e.num_features for e in run.engines) * 4
    available = available_memory()
    if available is None or needed <= available / 2:
        return False
    size = (f"The feature matrix ({needed / 2**30:.1f} GiB) would take more than half of the "
            f"memory available ({available / 2**30:.1f} GiB)")
    if cfg.head not in STREAMING_HEADS or cfg.augment_views:
        run.log(Note(f"Warning: {size}, but the {cfg.head!r} head"
                     f"{' with augment_views' if cfg.augment_views else ''} trains in memory "
                     f"only: training in memory (head='logreg' without augment_views trains out "
                     f"of core).", parameter=("augment_views", "head")))
        return False
    run.log(Note(f"{size}: training out of core (out_of_core=False keeps it in memory).",
                 parameter="out_of_core"))
    return True


def _set_precision(run: _Run, train_paths: list | DatasetStream) -> None:
    """``precision="int8"``: each backbone's graph quantized, calibrated on training images."""
    run.backbones = set_precision(run.backbones, run.config.precision, train_paths,
                                  cache_dir=run.config.cache_dir, log=run.log)


def _rebuild(run: _Run, stored: list[dict[str, Any]], threads: int) -> list[BuiltBackbone]:
    """The backbones a feature file was extracted with, checked against their weights hashes."""
    from graft.backbones import create_backbone, per_backbone
    from graft.features import create_engine

    cfg = run.config
    recipes = [BackboneRecipe.from_dict(config) for config in stored]
    overrides = per_backbone("weights", cfg.weights, [r.name for r in recipes],
                             broadcast=("random",))
    built = []
    for recipe, override in zip(recipes, overrides):
        chosen = override if override is not None else recipe.weights
        net = create_backbone(recipe.name, layer=recipe.layer, pool=recipe.pool, weights=chosen,
                              image_size=recipe.preprocess.size[0], cache_dir=cfg.cache_dir,
                              normalize=recipe.normalize, tta=recipe.tta)
        if net.weights_sha256 != recipe.weights_sha256:
            raise DataError(
                f"{run.data} was extracted from another checkpoint of {recipe.name} (sha256 "
                f"{str(recipe.weights_sha256)[:12]}..., now {net.weights_sha256[:12]}...). "
                f"Give the weights it was extracted with.", parameter="weights"
            )
        engine = create_engine(net, device="cpu", cache_dir=cfg.cache_dir, threads=threads)
        # the fp32 recipe: _set_precision quantizes again as --precision says
        recipe = (BackboneRecipe.from_dict(record_weights(net.config(), chosen))
                  if override is not None else dataclasses.replace(recipe, precision="fp32"))
        built.append(BuiltBackbone(net, engine, recipe))
    return built


def _resplit(features: FeatureSet, cfg: TrainConfig) -> FeatureSet:
    """A feature file's rows split as the options say (its own split folders are kept)."""
    given = list(features.split) if features.split_source == "folders" else None
    labels = [features.label_names[i] for i in features.labels]
    features.split = np.array(compute_splits(features.paths, labels, given=given,
                                             **cfg.split_params), dtype=object)
    if given is None:
        features.split_source = "hash"
    features.split_params = cfg.split_params
    return features


def _check_trainable(features: FeatureSet) -> None:
    """Step 3: every class has training images, and there is a test split to score."""
    train_labels = set(np.unique(features.labels[features.split == "train"]).tolist())
    missing = [name for i, name in enumerate(features.label_names) if i not in train_labels]
    if missing:
        raise DataError(
            f"No training images for class(es) {missing}: every class needs images in the "
            f"training split. Add images, or lower test_size.", parameter="test_size"
        )
    if not np.any(features.split == "test"):
        raise DataError(
            "The held-out test split is empty, so the model cannot be scored honestly. "
            "Use test_size > 0, or give a test/ (or val/) folder.", parameter="test_size"
        )


def _training_rows(run: _Run) -> tuple[np.ndarray, np.ndarray]:
    """Step 4: the training split's features, plus augmented views if asked for."""
    from graft.features import extract_views

    X_train, y_train = run.features.subset("train")
    run.n_original = len(y_train)
    cfg = run.config
    if not cfg.augment_views:
        return X_train, y_train
    X_views, y_views, report = extract_views(
        run.dataset, run.engines, views=cfg.augment_views, augment=run.augment,
        cache_dir=cfg.cache_dir, batch_size=cfg.batch_size, workers=run.plan.decode,
        progress=run.progress)
    run.log(f"Augmented views ({cfg.augment_views} per training image, "
            f"{','.join(run.augment)}): {report.summary()}")
    return np.vstack([X_train, X_views]), np.concatenate([y_train, y_views])


def _fit_head(run: _Run, X: np.ndarray, y: np.ndarray):
    """Step 5: pick (``auto``) and fit the head, timed, with deliberate thread pools."""
    from graft.heads import check_head_scales, create_head, fit_head, select_head

    cfg = run.config
    head_name, tried = cfg.head, {}
    check_head_scales(head_name, len(y))
    if head_name == "auto":
        run.log("Comparing heads by 3-fold cross-validation on the training split...")
        head_name, tried = select_head(X, y, random_state=cfg.seed,
                                       cpus=run.plan.cpus)
        run.log("Cross-validated accuracy: " + ", ".join(
            f"{k} {v['cv_accuracy']:.3f} ({v['seconds']:.1f}s)" for k, v in tried.items())
            + f" -> {head_name}")
    run.log(f"Training the {head_name} head on {len(y)} images...")
    estimator, seconds = fit_head(create_head(head_name, random_state=cfg.seed, y=y), X, y,
                                  name=head_name, progress=run.progress,
                                  cpus=run.plan.cpus)
    run.log(f"  fitted in {seconds:.1f}s")
    run.head_seconds = seconds
    return estimator, head_name, tried


def _check_leaks(run: _Run) -> None:
    """Step 3b: the cheap part of ``graft data check``: the same file content in two splits (a
    leak) or under two classes (a label conflict), warned about and kept for metrics.json."""
    from graft.data.check import split_leaks

    features = run.features
    run.content_hashes = features.read_content_hashes(workers=run.plan.cpus)
    found = split_leaks(features.paths, list(features.split),
                        [features.label_names[i] for i in features.labels], run.content_hashes)
    run.data_check = {"leaks_across_splits": len(found["leaks_across_splits"]),
                      "label_conflicts": len(found["label_conflicts"]),
                      "examples": (found["leaks_across_splits"] + found["label_conflicts"])[:10]}
    for key, what in (("leaks_across_splits", ("image(s) with the same content in more than "
                                               "one split: the test score counts images the "
                                               "model trained on")),
                      ("label_conflicts", "image(s) with the same content under two classes")):
        if found[key]:
            example = ", ".join(f"{m['split']}/{m['path']}" for m in found[key][0]["images"][:3])
            run.log(f"Warning: {len(found[key])} {what} (e.g. {example}). 'graft data check' "
                    f"lists them all, with near duplicates.")


def _training_content_hashes(run: _Run) -> np.ndarray:
    """Content hashes of the images the head was fitted or selected on (train and val)."""
    seen = np.isin(run.features.split, ["train", "val"])
    return run.content_hashes[seen]


def _write_model(run: _Run, directory: Path, estimator: Any, head_name: str,
                 head_scores: dict[str, float], n_features: int) -> dict[str, Any]:
    """Step 6: the model directory: graft.json, the ONNX graphs, the training content hashes."""
    from graft.bundle import save_model
    from graft.features.engine import OnnxEngine, export_backbone_onnx
    from graft.heads import describe_head, head_to_onnx

    head_info = {"name": head_name, **describe_head(estimator),
                 "fit_seconds": round(run.head_seconds, 3)}
    if run.out_of_core:
        from graft.features.store import CHUNK_ROWS

        head_info["out_of_core"] = {"chunk_rows": CHUNK_ROWS}
    if head_scores:
        head_info["auto"] = head_scores
    exported = []  # each backbone's ONNX graph: the cached export, or one made now (torch engine)
    for index, backbone in enumerate(run.backbones):
        if isinstance(backbone.engine, OnnxEngine):
            exported.append(backbone.engine.path)
        else:
            exported.append(export_backbone_onnx(backbone.net,
                                                 directory / f".export-{index}.onnx"))
    features = run.features
    save_model(
        directory,
        backbone_onnx=exported,
        head_onnx=head_to_onnx(estimator, n_features),
        labels=features.label_names,
        backbones=[backbone.recipe for backbone in run.backbones],
        feature_keys=[engine.key for engine in run.engines],
        head=HeadSpec.from_dict(head_info),
        metrics={},
        training=TrainingSpec(
            source=str(run.data if is_uri(run.data) else run.data.resolve()),
            data=str(features.root or run.data), counts=features.counts(),
            n_skipped=len(features.skipped)),
        split=SplitSpec.from_params(features.split_source, run.config.split_params),
        train_content_hashes=_training_content_hashes(run),
    )
    for path in exported:
        if path.parent == directory:
            path.unlink(missing_ok=True)
    return head_info


def _score_with_artifact(run: _Run, predictor: Predictor, estimator: Any) -> np.ndarray:
    """Step 7: test probabilities from the saved model, checked against the in-memory head.

    The saved head must reproduce the fitted head within ``PARITY_TOLERANCE`` on the whole test
    split, and on a sample of test images the whole saved pipeline (file -> decode -> backbone
    graph -> head) must reproduce the cached features' probabilities. Either failing is a
    ``ModelError``: the reported scores would not be the shipped model's.
    """
    features = run.features
    X_test, _ = features.subset("test")
    artifact = in_chunks(predictor.probabilities_from_features, X_test)
    memory = _align(estimator, in_chunks(estimator.predict_proba, X_test), run.n_classes)
    _check_parity("the saved head", artifact, memory, "the trained head")
    root = features.root or "."
    test_paths = [join(root, p) for p, s in zip(features.paths, features.split) if s == "test"]
    sample = np.linspace(0, len(test_paths) - 1, min(END_TO_END_SAMPLE, len(test_paths)))
    sample = np.unique(sample.astype(int))
    if all(is_file(test_paths[i]) for i in sample):  # a feature file's images may be gone
        direct = predictor.predict_proba([test_paths[i] for i in sample])
        _check_parity("the saved model run on the image files", direct, artifact[sample],
                      "the cached features")
    return artifact


def _check_parity(what: str, got: np.ndarray, expected: np.ndarray, reference: str) -> None:
    gap = float(np.max(np.abs(got - expected))) if got.size else 0.0
    if not gap <= PARITY_TOLERANCE:
        raise ModelError(
            f"{what} does not reproduce {reference}: probabilities differ by up to {gap:.2e} "
            f"(tolerance {PARITY_TOLERANCE:g}). The model was not saved, because its scores would "
            f"not be the shipped model's. Please report this with the command you ran."
        )


def _align(estimator: Any, probabilities: np.ndarray, n_classes: int) -> np.ndarray:
    """Columns in class-index order, even if the estimator saw only some classes."""
    classes = np.asarray(estimator.classes_)
    if len(classes) == n_classes and np.array_equal(classes, np.arange(n_classes)):
        return probabilities
    full = np.zeros((len(probabilities), n_classes), dtype=probabilities.dtype)
    full[:, classes.astype(int)] = probabilities
    return full


def _metrics(run: _Run, predictor: Predictor, probabilities: np.ndarray,
             n_rows: int) -> dict[str, Any]:
    """Step 8: the held-out metrics, every probability from the saved model."""
    features = run.features
    _, y_test = features.subset("test")
    metrics = compute_metrics(y_test, probabilities, features.label_names)
    metrics["scored_with"] = "saved model (graft.inference)"
    metrics["head_fit_seconds"] = round(run.head_seconds, 3)
    metrics["n_train"] = run.n_original
    if run.config.augment_views:
        metrics["augment_views"] = {"views": run.config.augment_views,
                                    "augment": list(run.augment), "n_train_rows": n_rows}
    X_val, y_val = features.subset("val")
    metrics["n_val"] = len(y_val)
    if len(y_val):
        val_probs = in_chunks(predictor.probabilities_from_features, X_val)
        metrics["val_accuracy"] = float(np.mean(val_probs.argmax(1) == y_val))
    metrics["skipped"] = [{"path": p, "reason": r} for p, r in features.skipped]
    metrics["data_check"] = run.data_check
    return metrics


def _split_description(features: FeatureSet, cfg: TrainConfig) -> str:
    if features.split_source == "folders":
        text = "the data's own split folders"
        return text + (f", val {cfg.val_size} of train (seed {cfg.seed})" if cfg.val_size else "")
    text = f"hash split: test {cfg.test_size}, val {cfg.val_size}, seed {cfg.seed}"
    return text + (f", groups by {cfg.group_regex!r}" if cfg.group_regex else "")


def _write_report(run: _Run, reports: ReportWriter, directory: Path, metrics: dict[str, Any],
                  probabilities: np.ndarray, head_info: dict[str, Any]) -> None:
    """Step 9: report.html and its figures."""
    features, cfg = run.features, run.config
    root = features.root or "."
    paths = np.array([join(root, p) for p in features.paths], dtype=object)
    recipes = [backbone.recipe for backbone in run.backbones]
    config = {
        "data": str(features.root or run.data),
        "backbone": " + ".join(f"{r.name} ({r.layer}, {r.num_features}-d)" for r in recipes),
        "weights": ", ".join(str(r.weights_source) for r in recipes),
        "input": ", ".join("x".join(map(str, r.preprocess.size)) for r in recipes),
        "head": head_info["name"],
        **{f"head {k}": v for k, v in head_info.get("best_params", {}).items()},
        "head fit": f"{head_info['fit_seconds']:.2f} s",
        **{f"auto: {k}": f"CV accuracy {v['cv_accuracy']:.3f}, {v['seconds']:.2f} s"
           for k, v in head_info.get("auto", {}).items()},
        "split": _split_description(features, cfg),
        "augmented views": cfg.augment_views,
    }
    _, y_test = features.subset("test")
    reports.write(directory, ReportInputs(
        title=f"{run.out.name}: {head_info['name']} on "
              f"{'+'.join(r.name for r in recipes)}",
        metrics=metrics, labels=features.label_names, y_true=y_test,
        probabilities=probabilities, test_paths=paths[features.split == "test"], config=config,
        counts=features.counts(), train_paths=paths[features.split == "train"],
        train_labels=features.subset("train")[1], cv_results=head_info.get("cv_results"),
    ))
