"""Preprocess: an image decoded once (:func:`graft.data.images.decode_image`), then resized and
cropped for each backbone, as the network expects it."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from graft.data.images import ImageSource, decode_image
from graft.data.preprocess import PreprocessConfig, resize_and_crop

__all__ = ["draft_size", "preprocess"]


def draft_size(configs: Sequence[PreprocessConfig]) -> tuple[int, int]:
    """The smallest JPEG draft decode that serves every config.

    Square, because EXIF rotation may still swap the sides after decoding.
    """
    side = max(max(config.scale_size) for config in configs)
    return side, side


def preprocess(
    source: ImageSource,
    configs: PreprocessConfig | Sequence[PreprocessConfig],
    *,
    max_pixels: int | None = None,
    formats: Sequence[str] | None = None,
) -> list[np.ndarray]:
    """Decode an image once and prepare it for each backbone: one ``uint8`` HxWx3 per config.

    Configs that differ only in normalization (done inside the networks) share one resize.
    """
    configs = [configs] if isinstance(configs, PreprocessConfig) else list(configs)
    image = decode_image(source, min_size=draft_size(configs), max_pixels=max_pixels,
                         formats=formats)
    prepared: dict[tuple, np.ndarray] = {}
    for config in configs:
        if config.geometry not in prepared:
            prepared[config.geometry] = resize_and_crop(image, config)
    return [prepared[config.geometry] for config in configs]
