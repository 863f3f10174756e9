"""Plumbing the workflows share: building backbones with their engines, output checks, logging."""

from __future__ import annotations

import dataclasses
import glob
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from graft.bundle.config import BackboneRecipe
from graft.catalog import PRECISIONS, one_of
from graft.data.dataset import DatasetStream
from graft.errors import ConfigError, GraftError

Log = Callable[[str], None]



def silent(_: str) -> None:
    """A log that says nothing (the library default; the CLI logs to stderr)."""


def record_weights(config: dict[str, Any], weights: str | None) -> dict[str, Any]:
    """Add where the weights came from, as something ``create_backbone`` takes again."""
    if weights is None or weights == "random" or weights.startswith(("http://", "https://")):
        config["weights"] = weights
    else:
        config["weights"] = str(Path(weights).expanduser().resolve())
    return config


@dataclass(frozen=True)
class BuiltBackbone:
    """One backbone ready to extract with, and its recipe as artifacts store it.

    Attributes:
        net: The torch backbone (:class:`graft.backbones.Backbone`), or None when the engine
            runs a cached ONNX graph and torch was never imported.
        engine: Its feature engine (ONNX Runtime, torch, or quantized).
    """

    net: Any
    engine: Any
    recipe: BackboneRecipe


def _cpu_only(device: str) -> bool:
    """Known without importing torch: ``cpu``, or ``auto`` on a machine with no NVIDIA device."""
    return device == "cpu" or (device == "auto" and not glob.glob("/dev/nvidia[0-9]*"))


def build_backbones(
    backbone: str | Sequence[str] | None,
    *,
    layer: str | Sequence[str] | None,
    weights: str | os.PathLike | Sequence[str] | None,
    pool: str | None,
    image_size: int | None,
    device: str,
    cache_dir: str | os.PathLike | None,
    threads: int | None = None,
    engine: str = "local",
    normalize: str | None = None,
    tta: str = "none",
) -> list[BuiltBackbone]:
    """The backbones (one, or several fused), each with its feature engine and recipe.

    With ``engine="ray"`` the device is the Ray actors': ``cuda`` builds torch engines kept on
    this process's CPU (it needs no GPU) that the actors move to theirs; ``auto`` runs the
    exported ONNX graphs on the actors' CPUs.

    A request built before, its ONNX graph cached, takes its engines from that record and never
    imports torch (the nets are then ``None``): see :mod:`graft.features.known`.
    """
    from graft.catalog import DEFAULT_BACKBONE
    from graft.features.known import find_known_engines, record_known_engines

    target = None
    if engine == "ray" and device.startswith("cuda"):
        if device != "cuda":
            raise ConfigError(f"device={device!r} with engine='ray': Ray gives each actor its "
                              f"own GPU; use device='cuda'.", parameter=("device", "engine"))
        device, target = "torch", "cuda"  # each actor sees its own GPU as cuda:0
    elif engine == "ray" and device == "auto":
        device = "cpu"
    request = {"layer": layer, "weights": weights, "pool": pool, "image_size": image_size,
               "normalize": normalize, "tta": tta, "cache_dir": cache_dir,
               "default": DEFAULT_BACKBONE}
    if _cpu_only(device):
        known = find_known_engines(backbone, threads=threads, **request)
        if known is not None:
            try:
                return [BuiltBackbone(None, engine, BackboneRecipe.from_dict(config))
                        for engine, config in zip(*known)]
            except GraftError:
                pass  # a record this graft cannot read: build the backbone again

    from graft.backbones import create_backbones, parse_backbone_names, per_backbone
    from graft.features import create_engine

    names = parse_backbone_names(backbone)
    nets = create_backbones(names, layer=layer, weights=weights, pool=pool,
                            image_size=image_size, cache_dir=cache_dir, normalize=normalize,
                            tta=tta)
    weights_list = per_backbone("weights", weights, names, broadcast=("random",))
    engines = [create_engine(net, device=device, cache_dir=cache_dir, threads=threads,
                             target=target) for net in nets]
    configs = [record_weights(net.config(), w) for net, w in zip(nets, weights_list)]
    record_known_engines(backbone, engines=engines, configs=configs, **request)
    return [BuiltBackbone(net, engine, BackboneRecipe.from_dict(config))
            for net, engine, config in zip(nets, engines, configs)]


def set_precision(built: list[BuiltBackbone], precision: str,
                  train_paths: Sequence[Any] | DatasetStream, *,
                  cache_dir: str | os.PathLike | None,
                  log: Log = silent) -> list[BuiltBackbone]:
    """The backbones for ``precision``: unchanged for fp32; for int8, each backbone
    quantized, calibrated on up to 200 of ``train_paths`` (of a :class:`DatasetStream`'s train
    split, listed for int8 only); for fp16/bf16 (``graft extract`` on CUDA), the torch engines
    autocast, their features cached apart from fp32 ones."""
    from graft.features.engine import AUTOCAST
    from graft.features.quantize import (
        CALIBRATION_IMAGES,
        calibration_identity,
        calibration_images,
        quantize_engine,
    )

    one_of("precision", precision, PRECISIONS)
    if precision == "fp32":
        return built
    if precision in AUTOCAST:
        for b in built:
            if not hasattr(b.engine, "set_precision"):
                # "mixed-precision": the bare word would be taken for the parameter by naming()
                raise ConfigError(f"precision={precision!r} is mixed-precision autocast, on a "
                                  f"GPU: use it with device='cuda' (on a CPU: 'fp32', or "
                                  f"'int8').", parameter=("precision", "device"))
            b.engine.set_precision(precision)
        return [dataclasses.replace(b, recipe=dataclasses.replace(b.recipe, precision=precision))
                for b in built]
    images = (train_paths.spread("train", CALIBRATION_IMAGES)
              if isinstance(train_paths, DatasetStream) else calibration_images(train_paths))
    identity = calibration_identity(images)  # read the images once, however many backbones
    return [dataclasses.replace(
        b, engine=quantize_engine(b.engine, images, identity=identity, cache_dir=cache_dir,
                                  log=log),
        recipe=dataclasses.replace(b.recipe, precision=precision)) for b in built]
