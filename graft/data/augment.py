"""Image augmentation with an explicit random generator: reproducible per image and view, and
safe in decode threads (no global RNG). Used by fine-tuning and by ``graft train --augment-views``.
"""

from __future__ import annotations

import math

import numpy as np
from PIL import Image, ImageEnhance

from graft.catalog import AUGMENTATIONS, parse_augment
from graft.data.preprocess import _INTERPOLATIONS, PreprocessConfig, resize_and_crop

__all__ = ["AUGMENTATIONS", "augment_for_network", "parse_augment"]


def _random_resized_crop(image: Image.Image, config: PreprocessConfig,
                         rng: np.random.Generator) -> Image.Image:
    # torchvision's RandomResizedCrop: area 50-100 %, aspect ratio 3/4-4/3, 10 tries then center.
    width, height = image.size
    area = width * height
    for _ in range(10):
        target = area * rng.uniform(0.5, 1.0)
        ratio = math.exp(rng.uniform(math.log(3 / 4), math.log(4 / 3)))
        w, h = round(math.sqrt(target * ratio)), round(math.sqrt(target / ratio))
        if 0 < w <= width and 0 < h <= height:
            left, top = int(rng.integers(0, width - w + 1)), int(rng.integers(0, height - h + 1))
            break
    else:
        w, h = min(width, height), min(width, height)
        left, top = (width - w) // 2, (height - h) // 2
    out_h, out_w = config.size
    return image.resize((out_w, out_h), _INTERPOLATIONS[config.interpolation],
                        box=(left, top, left + w, top + h))


def augment_for_network(image: Image.Image, config: PreprocessConfig, augment: tuple[str, ...],
                        rng: np.random.Generator) -> np.ndarray:
    """A random view of an RGB image, as ``uint8`` HxWx3 ready for the network.

    flip: horizontal, half the time. rotate: up to 20 % of a full turn either way (Keras
    ``RandomRotation(0.2)``, as in the tutorial). color: brightness, contrast and saturation
    x0.8-1.2. crop: a random resized crop (else the usual resize and center crop).
    """
    if "flip" in augment and rng.random() < 0.5:
        image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    if "rotate" in augment:
        image = image.rotate(float(rng.uniform(-72, 72)), resample=Image.Resampling.BILINEAR)
    if "color" in augment:
        for enhancer in (ImageEnhance.Brightness, ImageEnhance.Contrast, ImageEnhance.Color):
            image = enhancer(image).enhance(float(rng.uniform(0.8, 1.2)))
    if "crop" in augment:
        return np.asarray(_random_resized_crop(image, config, rng), dtype=np.uint8)
    return resize_and_crop(image, config)
