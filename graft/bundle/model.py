"""The model directory: one self-describing artifact, loaded without pickle.

::

    MODEL_DIR/
      graft.json     everything to rebuild and describe the model (backbones, cuts, weights
                     hashes, preprocessing, labels in order, head and hyper-parameters,
                     versions, data): graft.bundle.config.ModelConfig
      metrics.json   held-out scores
      backbone.onnx  uint8 NHWC images -> features (normalization inside the graph); fused
                     backbones have one graph each, backbone-0-NAME.onnx, backbone-1-NAME.onnx...
      head.onnx      features (fused backbones: each rescaled, then side by side; see
                     graft.bundle.fusion) -> class probabilities

Why separate ONNX graphs and not one: the feature cache is keyed by each backbone graph, so
``graft evaluate`` reuses cached features, and one backbone file can serve many heads. All are
plain ONNX: predicting needs only onnxruntime, and no file in the directory can run code on load.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as _dt
import hashlib
import json
import os
import platform
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

from graft.bundle.config import (
    MODEL_FORMAT,
    MODEL_FORMAT_VERSION,
    BackboneRecipe,
    FileSpec,
    HeadSpec,
    ModelConfig,
    SplitSpec,
    TrainingSpec,
)
from graft.bundle.fusion import FUSION
from graft.errors import ConfigError, ModelError

__all__ = [
    "CHECKPOINT_FILE",
    "CONFIG_FILE",
    "METRICS_FILE",
    "MODEL_FORMAT",
    "MODEL_FORMAT_VERSION",
    "check_replaceable",
    "file_sha256",
    "library_versions",
    "load_model_config",
    "save_model",
    "staged_model_dir",
    "write_metrics",
]

CONFIG_FILE = "graft.json"
METRICS_FILE = "metrics.json"
BACKBONE_FILE = "backbone.onnx"
HEAD_FILE = "head.onnx"
# the name (and graft.json's key for it) older versions of graft read
CONTENT_HASHES_FILE = "train-fingerprints.u64"


def file_sha256(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def library_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for package in ("graft", "torch", "timm", "onnxruntime", "onnx", "scikit-learn", "skl2onnx",
                    "numpy", "pillow", "h5py"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            pass
    return versions


def _write_json(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=False) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def write_metrics(model_dir: str | os.PathLike, metrics: dict[str, Any]) -> Path:
    """Write (or rewrite) ``metrics.json`` in a model directory."""
    path = Path(model_dir) / METRICS_FILE
    _write_json(path, metrics)
    return path


# Files that make an existing directory safe to replace with a new model: a model's config, or
# the resume state of an interrupted ``graft finetune``.
CHECKPOINT_FILE = "checkpoint.pt"  # graft finetune's resume state, deleted when it succeeds
_REPLACEABLE_MARKERS = (CONFIG_FILE, CHECKPOINT_FILE)


def check_replaceable(out: str | os.PathLike, param: str = "out") -> None:
    """Refuse to overwrite a directory that is not a graft model (it is replaced whole).

    Args:
        param: The caller's parameter that gave ``out`` (the CLI names its flag).

    Raises:
        ConfigError: ``out`` exists, is not empty, and holds no model or resume state.
    """
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"{param}={os.fspath(out)!r} is a file; give a folder for the model.",
                          parameter=param)
    if out.is_dir() and any(out.iterdir()) and not any(
            (out / marker).is_file() for marker in _REPLACEABLE_MARKERS):
        raise ConfigError(
            f"{param}={os.fspath(out)!r} already exists and is not a graft model directory; a "
            f"model directory is replaced whole, so graft will not write there. Choose a new "
            f"folder.", parameter=param
        )


@contextlib.contextmanager
def staged_model_dir(out: str | os.PathLike, param: str = "out") -> Iterator[Path]:
    """A temporary directory beside ``out`` that replaces ``out`` only if the block succeeds.

    A run that fails or is interrupted leaves the previous model (if any) untouched and no
    half-written directory behind. ``out`` must pass :func:`check_replaceable` (``param`` names
    it in the message).
    """
    out = Path(out)
    check_replaceable(out, param)
    out.parent.mkdir(parents=True, exist_ok=True)
    # os.mkdir honours the umask (tempfile.mkdtemp would make the model private, mode 0700).
    staging = out.parent / f".{out.name}.staging-{uuid.uuid4().hex[:12]}"
    staging.mkdir()
    try:
        yield staging
        old = None
        if out.exists():
            old = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.old-"))
            os.replace(out, old / out.name)
        try:
            os.replace(staging, out)
        except BaseException:
            if old is not None:  # put the previous model back
                os.replace(old / out.name, out)
            raise
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)


def _write_hashes(model_dir: Path, hashes: np.ndarray) -> FileSpec:
    """The training images' content hashes, as the model directory lists them."""
    from graft.data.contents import write_content_hashes

    path = write_content_hashes(model_dir / CONTENT_HASHES_FILE, hashes)
    return FileSpec(CONTENT_HASHES_FILE, file_sha256(path),
                    format="sorted little-endian uint64: the first 8 bytes of each training "
                           "image's SHA-256")


def save_model(
    model_dir: str | os.PathLike,
    *,
    backbone_onnx: list[str | os.PathLike],
    head_onnx: Any,
    labels: list[str],
    backbones: list[BackboneRecipe],
    feature_keys: list[str],
    head: HeadSpec,
    metrics: dict[str, Any],
    training: TrainingSpec,
    split: SplitSpec,
    train_content_hashes: np.ndarray | None = None,
) -> Path:
    """Write a complete model directory (config last, so a partial directory never looks valid).

    Args:
        model_dir: A new directory, or the staging one of :func:`staged_model_dir` (replacing a
            model goes through it, so a failed save never leaves half of one).
        head_onnx: The head graph (an ``onnx.ModelProto``): features -> ``probabilities``.
        train_content_hashes: Content hashes of the images the model was fitted on
            (:mod:`graft.data.contents`), kept so evaluation can detect overlap.

    Raises:
        ConfigError: ``model_dir`` holds a model already.
    """
    import onnx

    model_dir = Path(model_dir)
    model_dir.mkdir(parents=True, exist_ok=True)
    config_path = model_dir / CONFIG_FILE
    if config_path.exists():
        raise ConfigError(f"save_model: model_dir {model_dir} holds a model already; replace "
                          f"one through staged_model_dir.")
    entries = []
    for index, (source, backbone, key) in enumerate(zip(backbone_onnx, backbones, feature_keys)):
        name = BACKBONE_FILE if len(backbones) == 1 else f"backbone-{index}-{backbone.name}.onnx"
        shutil.copyfile(source, model_dir / name)
        entries.append(dataclasses.replace(
            backbone, feature_key=key, file=FileSpec(name, file_sha256(model_dir / name))))
    onnx.save_model(head_onnx, model_dir / HEAD_FILE)
    write_metrics(model_dir, metrics)
    hashes_file = (None if train_content_hashes is None
                   else _write_hashes(model_dir, train_content_hashes))
    config = ModelConfig(
        labels=list(labels), backbones=entries, head=head,
        head_file=FileSpec(HEAD_FILE, file_sha256(model_dir / HEAD_FILE)),
        content_hashes_file=hashes_file, split=split, training=training,
        fusion=FUSION if len(entries) > 1 else "none",
        created=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        versions=library_versions(),
    )
    _write_json(config_path, config.to_dict())
    return model_dir


def load_model_config(model_dir: str | os.PathLike, verify: bool = True) -> ModelConfig:
    """Read and check ``graft.json`` (any format up to the current one); with ``verify``, check
    the files' SHA-256 too.

    Raises:
        ModelError: For a missing, partial, tampered or incompatible model directory.
    """
    model_dir = Path(model_dir)
    config_path = model_dir / CONFIG_FILE
    if not config_path.is_file():
        raise ModelError(
            f"{model_dir} is not a graft model directory (no {CONFIG_FILE}). Create one with "
            f"graft train (or graft.train) and give that folder."
        )
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ModelError(f"Cannot read {config_path}: {exc}") from exc
    config = ModelConfig.from_dict(config, where=str(config_path))
    for entry in config.files:
        path = model_dir / entry.path
        if not path.is_file():
            raise ModelError(f"{model_dir} is incomplete: {entry.path} is missing.")
        if verify and file_sha256(path) != entry.sha256:
            raise ModelError(
                f"{path} does not match the SHA-256 recorded in {CONFIG_FILE}: the file was changed "
                f"or corrupted. Re-train or re-copy the model directory."
            )
    return config
