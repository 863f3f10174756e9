"""``graft extract``: a dataset's features into a feature file (HDF5)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from graft.config import ExtractConfig, resolve_config
from graft.data.dataset import stream_dataset
from graft.data.storage import check_local
from graft.features import ExtractionReport, extract_to_file
from graft.system import plan_threads
from graft.workflows._common import build_backbones, set_precision

__all__ = ["ExtractConfig", "extract"]


def extract(
    data: str | os.PathLike,
    out: str | os.PathLike,
    config: ExtractConfig | None = None,
    *,
    progress: bool = True,
    **options: Any,
) -> tuple[Path, ExtractionReport]:
    """Extract the features of an image folder (or CSV) into a feature file (HDF5).

    Args:
        data: ``DATA/<class>/<image>``, pre-split ``DATA/{train,val,test}/...``, or a CSV.
        out: The ``.h5`` file to write: ``features``, ``labels``, ``label_names``, ``paths``,
            ``split``, and each backbone's config as attributes.
        config: An :class:`ExtractConfig` (the backbones, how they run, the split); keyword
            ``options`` (its field names, e.g. ``backbone="vgg16+resnet50"``,
            ``precision="int8"``) override its fields.
        progress: Show progress bars.

    Returns:
        The file written, and what was extracted, read from the cache, or skipped.
    """
    config = resolve_config(ExtractConfig, config, options).validate()
    cache_dir = config.cache_dir
    check_local(out, "the feature file")
    dataset = stream_dataset(data, **config.split_params, cache_dir=cache_dir, progress=progress)
    plan = plan_threads(config.threads)
    built = build_backbones(config.backbone, layer=config.layer, weights=config.weights,
                            pool=config.pool, image_size=config.image_size,
                            device=config.device, cache_dir=cache_dir, threads=plan.onnx,
                            engine=config.engine, normalize=config.normalize,
                            tta=config.tta)
    built = set_precision(built, config.precision, dataset, cache_dir=cache_dir)
    engines, configs = [b.engine for b in built], [b.recipe.to_dict() for b in built]
    try:
        return extract_to_file(dataset, engines, configs, out, cache_dir=cache_dir,
                               batch_size=config.batch_size, workers=plan.decode,
                               progress=progress, engine=config.engine,
                               address=config.address)
    finally:
        for engine in engines:  # their ONNX Runtime worker threads
            engine.close()
