"""The model directory: one self-describing artifact, loaded without pickle.

::

    MODEL_DIR/
      graft.json     everything to rebuild and describe the model (backbones, cuts, weights
                     hashes, preprocessing, labels in order, head and hyper-parameters,
                     versions, data)
      metrics.json   held-out scores
      backbone.onnx  uint8 NHWC images -> features (normalization inside the graph); fused
                     backbones have one graph each, backbone-0-NAME.onnx, backbone-1-NAME.onnx...
      head.onnx      features (fused backbones: each rescaled, then side by side; see
                     graft.features.fusion) -> class probabilities

Why separate ONNX graphs and not one: the feature cache is keyed by each backbone graph, so
``graft evaluate`` reuses cached features, and one backbone file can serve many heads. All are
plain ONNX: predicting needs only onnxruntime, and no file in the directory can run code on load.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
import platform
import shutil
from importlib import metadata
from pathlib import Path
from typing import Any

import onnx

from graft.data.preprocess import PreprocessConfig
from graft.errors import ModelError
from graft.features.fusion import FUSION

__all__ = ["MODEL_FORMAT", "file_sha256", "library_versions", "load_model_config", "save_model"]

MODEL_FORMAT = "graft-model"
MODEL_FORMAT_VERSION = 1
CONFIG_FILE = "graft.json"
METRICS_FILE = "metrics.json"
BACKBONE_FILE = "backbone.onnx"
HEAD_FILE = "head.onnx"


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


def save_model(
    model_dir: str | os.PathLike,
    *,
    backbone_onnx: list[str | os.PathLike],
    head_onnx: onnx.ModelProto,
    labels: list[str],
    backbones: list[dict[str, Any]],
    feature_keys: list[str],
    head: dict[str, Any],
    metrics: dict[str, Any],
    training: dict[str, Any],
) -> Path:
    """Write a complete model directory (config last, so a partial directory never looks valid)."""
    model_dir = Path(model_dir)
    model_dir.mkdir(parents=True, exist_ok=True)
    config_path = model_dir / CONFIG_FILE
    if config_path.exists():
        config_path.unlink()
    for stale in model_dir.glob("backbone*.onnx"):
        stale.unlink()
    entries = []
    for index, (source, backbone, key) in enumerate(zip(backbone_onnx, backbones, feature_keys)):
        name = BACKBONE_FILE if len(backbones) == 1 else f"backbone-{index}-{backbone['name']}.onnx"
        shutil.copyfile(source, model_dir / name)
        entries.append({**backbone, "feature_key": key,
                        "file": {"path": name, "sha256": file_sha256(model_dir / name)}})
    onnx.save_model(head_onnx, model_dir / HEAD_FILE)
    _write_json(model_dir / METRICS_FILE, metrics)
    config = {
        "format": MODEL_FORMAT,
        "format_version": MODEL_FORMAT_VERSION,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "task": "image-classification",
        "labels": list(labels),
        "backbones": entries,
        "fusion": FUSION if len(entries) > 1 else "none",
        "head": head,
        "inputs": {
            "images": "uint8 (N, H, W, 3) RGB per backbone, resized and cropped as its "
                      "'preprocess' says; each backbone graph normalizes; the head takes the "
                      "backbones' features concatenated in order",
        },
        "files": {"head": {"path": HEAD_FILE, "sha256": file_sha256(model_dir / HEAD_FILE)}},
        "training": training,
        "versions": library_versions(),
    }
    _write_json(config_path, config)
    return model_dir


def load_model_config(model_dir: str | os.PathLike, verify: bool = True) -> dict[str, Any]:
    """Read and check ``graft.json``; with ``verify``, check the ONNX files' SHA-256 too.

    Raises:
        ModelError: For a missing, partial, tampered or incompatible model directory.
    """
    model_dir = Path(model_dir)
    config_path = model_dir / CONFIG_FILE
    if not config_path.is_file():
        raise ModelError(
            f"{model_dir} is not a graft model directory (no {CONFIG_FILE}). Create one with "
            f"'graft train DATA --out {model_dir}'."
        )
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ModelError(f"Cannot read {config_path}: {exc}") from exc
    if config.get("format") != MODEL_FORMAT:
        raise ModelError(f"{config_path} is not a graft model config (format {config.get('format')!r}).")
    if int(config.get("format_version", 0)) > MODEL_FORMAT_VERSION:
        raise ModelError(
            f"{model_dir} was saved by a newer graft (format {config['format_version']}); "
            f"upgrade graft to load it."
        )
    entries = [config["files"]["head"], *(b["file"] for b in config["backbones"])]
    for entry in entries:
        path = model_dir / entry["path"]
        if not path.is_file():
            raise ModelError(f"{model_dir} is incomplete: {entry['path']} is missing.")
        if verify and file_sha256(path) != entry["sha256"]:
            raise ModelError(
                f"{path} does not match the SHA-256 recorded in {CONFIG_FILE}: the file was changed "
                f"or corrupted. Re-train or re-copy the model directory."
            )
    for backbone in config["backbones"]:
        PreprocessConfig.from_dict(backbone["preprocess"])  # validates
    return config
