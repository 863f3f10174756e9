"""Paths and environment settings shared by every stage, and the options of each job.

The config dataclasses live here, beside the catalog and away from the training stack, so the
CLI reads its defaults from them without importing torch or scikit-learn.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import platformdirs

from graft.catalog import (
    CLASS_WEIGHTS,
    DEFAULT_AUGMENT,
    DEFAULT_BACKBONE,
    DEFAULT_HEAD,
    DEVICES,
    ENGINES,
    EVALUATE_SPLITS,
    HEAD_DESCRIPTIONS,
    MODEL_PRECISIONS,
    NORMALIZATIONS,
    POOLS,
    TTA,
    PRECISIONS,
    STREAMING_HEADS,
    one_of,
    parse_augment,
)
from graft.errors import ConfigError

__all__ = [
    "EvaluateConfig",
    "ExtractConfig",
    "FinetuneConfig",
    "PredictConfig",
    "TrainConfig",
    "resolve_cache_dir",
    "resolve_config",
]

_C = TypeVar("_C")


def resolve_cache_dir(cache_dir: str | os.PathLike | None = None) -> Path:
    """Return the cache directory: explicit > ``GRAFT_CACHE_DIR`` > the platform user cache dir."""
    if cache_dir is None:
        cache_dir = os.environ.get("GRAFT_CACHE_DIR") or platformdirs.user_cache_dir("graft")
    path = Path(cache_dir).expanduser()
    path.mkdir(parents=True, exist_ok=True)
    return path


def resolve_config(cls: type[_C], config: _C | None, options: dict[str, Any]) -> _C:
    """``config`` (default: ``cls()``) with keyword ``options`` (its field names) over it."""
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(options) - known)
    if unknown:
        raise ConfigError(f"Unknown option(s) {unknown} for {cls.__name__}. Known: "
                          f"{sorted(known)}.")
    return dataclasses.replace(config or cls(), **options)


def _at_least(config: Any, name: str, lowest: int = 1) -> None:
    value = getattr(config, name)
    if value is not None and (isinstance(value, bool) or not isinstance(value, int)
                              or value < lowest):
        raise ConfigError(f"{name} must be an integer >= {lowest}. Got {value!r}.",
                          parameter=name)


@dataclass
class ExtractConfig:
    """Every option of ``graft extract``: the backbones, how they run, and the split.

    Attributes:
        backbone: Registry or timm name; ``"a+b"`` or a list fuses several (their features
            concatenated); ``weights`` and ``layer`` then take ``NAME=VALUE``.
        layer: Where to cut (``NAME=LAYER`` per fused backbone).
        weights: Local file, URL, or None for the offline/hub default (``NAME=PATH`` per backbone).
        pool: Reduction of a spatial map or of a transformer's tokens: one of
            :data:`graft.catalog.POOLS`; None: the backbone's recipe (``avg``, its own pooling,
            but for the presets of ``graft backbones`` that say otherwise).
        image_size: Input resolution override (a transformer is built for it).
        normalize: ``l2`` scales each feature vector to unit length (CLIP-style features);
            None: the backbone's recipe.
        tta: ``flip``: each image's features averaged with its mirror image's (twice the
            extraction cost; inside the exported graph, so predict and serve do the same).
        batch_size: Images per forward pass.
        device: ``auto``, ``cpu`` (ONNX Runtime), ``cuda``, ``cuda:N`` or ``torch``; with
            ``engine="ray"`` the Ray actors' (``cuda``: one actor per GPU of the cluster).
        cache_dir: Feature and ONNX cache (default ``$GRAFT_CACHE_DIR`` or the user cache).
        test_size, val_size, seed, group_regex: The split of unsplit data (see
            :func:`graft.data.assign_splits`); pre-split folders keep theirs.
        threads: CPUs to use, split between decoding and the network (default: all available).
        precision: ``fp32``, ``int8`` (quantized, calibrated on up to 200 training images), or
            on CUDA ``fp16``/``bf16`` (torch autocast; cached apart from fp32 features).
        engine: ``local``, or ``ray``: decode and run the graphs on the Ray cluster at
            ``address`` (``auto``, ``host:port``...; default ``$RAY_ADDRESS``, else a local one).
    """

    backbone: str | Sequence[str] | None = DEFAULT_BACKBONE
    layer: str | Sequence[str] | None = None
    weights: str | os.PathLike | Sequence[str] | None = None
    pool: str | None = None
    image_size: int | None = None
    normalize: str | None = None
    tta: str = "none"
    batch_size: int = 32
    device: str = "auto"
    cache_dir: str | os.PathLike | None = None
    test_size: float = 0.2
    val_size: float = 0.0
    seed: int = 0
    group_regex: str | None = None
    threads: int | None = None
    precision: str = "fp32"
    engine: str = "local"
    address: str | None = None

    def validate(self) -> ExtractConfig:
        """Check what can be checked before any work (the split when the data is listed)."""
        self._check(PRECISIONS)
        return self

    def _check(self, precisions: tuple[str, ...]) -> None:
        for name in ("batch_size", "image_size", "threads"):
            _at_least(self, name)
        if self.pool is not None:
            one_of("pool", self.pool, POOLS)
        if self.normalize is not None:
            one_of("normalize", self.normalize, NORMALIZATIONS)
        one_of("tta", self.tta, TTA)
        one_of("device", self.device, DEVICES)
        one_of("engine", self.engine, ENGINES)
        one_of("precision", self.precision, precisions)

    @property
    def split_params(self) -> dict[str, Any]:
        return {"test_size": self.test_size, "val_size": self.val_size, "seed": self.seed,
                "group_regex": self.group_regex}


@dataclass
class TrainConfig(ExtractConfig):
    """Every option of ``graft train`` (the CLI flags map onto these fields): those of
    :class:`ExtractConfig`, and the head's.

    Attributes:
        precision: ``fp32``, or ``int8``: the backbone quantized (calibrated on up to 200
            training images); the model directory then ships the int8 graph.
        head: A head from ``graft heads``, or ``auto``.
        augment_views: Also extract this many augmented views of every training image (cached).
        augment: The transformations for ``augment_views``.
        out_of_core: Train from the feature cache a chunk at a time, never holding the whole
            feature matrix (the ``logreg`` head). Default (None): only when the matrix would take
            more than half of the memory available.
    """

    head: str = DEFAULT_HEAD
    augment_views: int = 0
    augment: str = DEFAULT_AUGMENT
    out_of_core: bool | None = None

    def validate(self) -> tuple[str, ...]:  # type: ignore[override]
        """Check the options that can be checked before any work; return the augmentations."""
        self._check(MODEL_PRECISIONS)
        one_of("head", self.head, tuple(HEAD_DESCRIPTIONS))
        augment = parse_augment(self.augment)
        _at_least(self, "augment_views", 0)
        if self.augment_views and not augment:
            raise ConfigError("augment_views needs at least one augment transformation.",
                              parameter=("augment_views", "augment"))
        if self.out_of_core and self.augment_views:
            raise ConfigError("augment_views and out_of_core do not go together: the views "
                              "would multiply the rows that do not fit. Leave one out.",
                              parameter=("augment_views", "out_of_core"))
        if self.out_of_core and self.head not in STREAMING_HEADS:
            raise ConfigError(f"The {self.head!r} head needs every feature in memory; out of "
                              f"core, use head={' or '.join(STREAMING_HEADS)} (or leave head "
                              f"out).", parameter="head")
        return augment


@dataclass
class EvaluateConfig:
    """Every option of ``graft evaluate``.

    Attributes:
        split: One of :data:`graft.catalog.EVALUATE_SPLITS`. Default: on the data the model was
            trained on, its held-out ``test`` split (recomputed from ``graft.json``); on other
            pre-split data, its test (else val) folder; on other unsplit data, ``all``.
        batch_size: Images per forward pass.
        cache_dir: Feature cache (default ``$GRAFT_CACHE_DIR`` or the user cache).
        report: Also write ``report.html``, its figures and ``metrics.json`` into this folder
            (needs the report extra: matplotlib).
        threads: CPUs to use, split between decoding and the network.
        engine: ``local``, or ``ray`` to run the backbones of the images not yet cached on the
            Ray cluster at ``address``.
    """

    split: str | None = None
    batch_size: int = 32
    cache_dir: str | os.PathLike | None = None
    report: str | os.PathLike | None = None
    threads: int | None = None
    engine: str = "local"
    address: str | None = None

    def validate(self) -> EvaluateConfig:
        if self.split is not None:
            one_of("split", self.split, EVALUATE_SPLITS)
        for name in ("batch_size", "threads"):
            _at_least(self, name)
        one_of("engine", self.engine, ENGINES)
        return self


@dataclass
class PredictConfig:
    """Every option of ``graft predict``.

    Attributes:
        top_k: Labels per image.
        batch_size: Images per forward pass.
        threads: CPUs to use, split between decoding and the network.
        engine: ``local`` (this process) or ``ray`` (the backbones run on the Ray cluster at
            ``address``; the same predictions, in the same order).
    """

    top_k: int = 5
    batch_size: int = 32
    threads: int | None = None
    engine: str = "local"
    address: str | None = None

    def validate(self) -> PredictConfig:
        for name in ("top_k", "batch_size", "threads"):
            _at_least(self, name)
        one_of("engine", self.engine, ENGINES)
        return self


@dataclass
class FinetuneConfig:
    """Every option of ``graft finetune`` (the CLI maps onto these fields)."""

    backbone: str = DEFAULT_BACKBONE
    weights: str | None = None
    image_size: int | None = None
    epochs: int = 10
    fine_tune_epochs: int = 10
    unfreeze: str = "2"
    lr: float = 1e-3
    fine_tune_lr: float = 1e-5
    batch_size: int = 32
    augment: str = DEFAULT_AUGMENT
    dropout: float = 0.2
    class_weights: str | None = None
    patience: int = 3
    seed: int = 0
    test_size: float = 0.2
    val_size: float = 0.1
    group_regex: str | None = None
    device: str = "auto"
    workers: int | None = None

    def validate(self) -> None:
        for name in ("epochs", "fine_tune_epochs", "patience"):
            _at_least(self, name, 0)
        if self.epochs == 0 and self.fine_tune_epochs == 0:
            raise ConfigError("epochs and fine_tune_epochs are both 0, so nothing would be "
                              "trained. Give at least one of them a number of epochs.",
                              parameter=("epochs", "fine_tune_epochs"))
        for name in ("batch_size", "image_size"):
            _at_least(self, name)
        _at_least(self, "workers", 0)
        for name in ("lr", "fine_tune_lr"):
            if not getattr(self, name) > 0:
                raise ConfigError(f"{name} must be > 0. Got {getattr(self, name)!r}.",
                                  parameter=name)
        if not 0 <= self.dropout < 1:
            raise ConfigError(f"dropout must be in [0, 1). Got {self.dropout!r}.",
                              parameter="dropout")
        if self.class_weights is not None:
            one_of("class_weights", self.class_weights, CLASS_WEIGHTS)
        if self.unfreeze != "all" and not str(self.unfreeze).isdigit():
            raise ConfigError(f"unfreeze must be a number of blocks or 'all'. "
                              f"Got {self.unfreeze!r}.", parameter="unfreeze")
        one_of("device", self.device, DEVICES)
        parse_augment(self.augment)
