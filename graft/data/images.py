"""Reading image files robustly: every format users have, every mode, and a reason for every failure."""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

from graft.data.preprocess import PreprocessConfig, resize_and_crop
from graft.errors import ImageError

__all__ = [
    "IMAGE_EXTENSIONS",
    "is_image_file",
    "load_for_network",
    "load_for_networks",
    "load_image",
    "to_rgb",
]

IMAGE_EXTENSIONS = frozenset(
    {".jpg", ".jpeg", ".jpe", ".jfif", ".png", ".gif", ".bmp", ".webp", ".tif", ".tiff"}
)

# Truncated files must fail loudly, not come back half grey.
ImageFile.LOAD_TRUNCATED_IMAGES = False


def is_image_file(path: str | os.PathLike) -> bool:
    """True for a file whose extension is one graft reads (hidden files never are)."""
    name = os.path.basename(os.fspath(path))
    return not name.startswith(".") and os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS


def to_rgb(image: Image.Image) -> Image.Image:
    """Convert any PIL mode to 8-bit RGB the way a person would expect to see it.

    Transparent areas become white (not whatever colour the invisible pixels happen to hold),
    16/32-bit integer images are scaled to 8 bits instead of clipped, CMYK and palette images are
    converted through PIL.
    """
    mode = image.mode
    if mode == "RGB":
        return image
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        array = np.asarray(image)
        if mode == "F":
            high = float(array.max()) if array.size else 1.0
            array = array / (max(1.0, high)) * 255.0
        else:
            array = array.astype(np.float64) / (257.0 if array.max() > 255 else 1.0)
        gray = Image.fromarray(np.clip(array + 0.5, 0, 255).astype(np.uint8), mode="L")
        return gray.convert("RGB")
    if mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
        mode = "RGBA"
    if mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        image = image.convert("RGBA")
        background = Image.new("RGBA", image.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, image).convert("RGB")
    return image.convert("RGB")


def load_image(path: str | os.PathLike, min_size: tuple[int, int] | None = None) -> Image.Image:
    """Open, fully decode, orient (EXIF) and convert an image file to RGB.

    Args:
        path: The image file.
        min_size: ``(width, height)`` the caller will resize to; large JPEGs are then decoded at a
            reduced DCT scale no smaller than this (``Image.draft``), several times faster.

    Raises:
        ImageError: With the reason, for an empty, truncated, unreadable or oversized file.
    """
    path = Path(path)
    try:
        if path.stat().st_size == 0:
            raise ImageError(f"{path}: empty file (0 bytes)")
        with warnings.catch_warnings():
            # Above Image.MAX_IMAGE_PIXELS PIL only warns; a bomb must not eat the memory.
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as image:
                if min_size is not None and image.format == "JPEG":
                    image.draft("RGB", min_size)
                image.load()
                image = ImageOps.exif_transpose(image)
                return to_rgb(image)
    except ImageError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageError(f"{path}: refused as a decompression bomb ({exc})") from exc
    except UnidentifiedImageError as exc:
        raise ImageError(f"{path}: not an image PIL can identify") from exc
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise ImageError(f"{path}: cannot decode ({type(exc).__name__}: {exc})") from exc


def load_for_network(path: str | os.PathLike, config: PreprocessConfig) -> np.ndarray:
    """Decode, orient, resize and crop one file: ``uint8`` HxWx3, ready for the backbone graph."""
    return load_for_networks(path, [config])[0]


def load_for_networks(
    path: str | os.PathLike, configs: Sequence[PreprocessConfig]
) -> list[np.ndarray]:
    """Decode a file once and prepare it for each config (fused backbones); one array per config.

    Configs that differ only in normalization (done inside the networks) share one resize.
    """
    # Square request: EXIF rotation may still swap the sides after decoding.
    side = max(max(config.scale_size) for config in configs)
    image = load_image(path, min_size=(side, side))
    prepared: dict[tuple, np.ndarray] = {}
    for config in configs:
        if config.geometry not in prepared:
            prepared[config.geometry] = resize_and_crop(image, config)
    return [prepared[config.geometry] for config in configs]
