"""``graft extract``: a dataset's features into a feature file (HDF5)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from graft.catalog import DEFAULT_BACKBONE
from graft.data.dataset import stream_dataset
from graft.data.storage import check_local
from graft.errors import ConfigError
from graft.features import ExtractionReport, extract_to_file
from graft.system import plan_threads
from graft.workflows._common import build_backbones, set_precision

__all__ = ["extract"]


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
    threads: int | None = None,
    precision: str = "fp32",
    progress: bool = True,
    engine: str = "local",
    address: str | None = None,
) -> tuple[Path, ExtractionReport]:
    """Extract the features of an image folder (or CSV) into a feature file (HDF5).

    Args:
        data: ``DATA/<class>/<image>``, pre-split ``DATA/{train,val,test}/...``, or a CSV.
        out: The ``.h5`` file to write: ``features``, ``labels``, ``label_names``, ``paths``,
            ``split``, and each backbone's config as attributes.
        backbone: A registry or timm name; several (``"vgg16+resnet50"`` or a list) are fused,
            their features concatenated. ``weights`` and ``layer`` then take ``NAME=VALUE``.
        threads: CPUs to use, split between decoding and the network.
        precision: ``fp32``, ``int8`` (quantized, calibrated on up to 200 training images), or
            on CUDA ``fp16``/``bf16`` (torch autocast; cached apart from fp32 features).
        device: ``auto``, ``cpu`` (ONNX Runtime), ``cuda`` or ``torch``; with ``engine="ray"``
            the Ray actors' (``cuda``: one actor per GPU of the cluster).
        engine: ``local``, or ``ray`` (decode and run the graphs on the Ray cluster at
            ``address``; default ``$RAY_ADDRESS``, else a local one).

    Returns:
        The file written, and what was extracted, read from the cache, or skipped.
    """
    check_local(out, "the feature file")
    dataset = stream_dataset(data, test_size=test_size, val_size=val_size, seed=seed,
                             group_regex=group_regex, cache_dir=cache_dir, progress=progress)
    plan = plan_threads(threads)
    _, engines, configs = build_backbones(backbone, layer=layer, weights=weights, pool=pool,
                                          image_size=image_size, device=device,
                                          cache_dir=cache_dir, threads=plan.onnx, engine=engine)
    engines, configs = set_precision(engines, configs, precision, dataset, cache_dir=cache_dir)
    if engine not in ("local", "ray"):
        raise ConfigError(f"--engine must be local or ray. Got {engine!r}.")
    return extract_to_file(dataset, engines, configs, out, cache_dir=cache_dir,
                           batch_size=batch_size, workers=plan.decode, progress=progress,
                           engine=engine, address=address)
