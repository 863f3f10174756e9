"""Decoding images robustly: every source users have (a path, bytes, a binary file, a PIL image, a
``uint8`` array), every mode, and a reason for every failure.

This is the only decode function in graft: feature extraction, fine-tuning, prediction, the HTTP
server and the Ray workers all call :func:`decode_image` (most through
:func:`graft.inference.images.preprocess`), and ``graft data check`` reads images with it too, so
an image gives the same network input whichever door it came in by.

Nothing here changes process-global state: the pixel limit is checked explicitly from the image
header before any pixel is decoded (PIL's own check is a warning, and warning filters are
process-wide, so toggling them from decode threads races), and PIL's module settings are left as
they are.
"""

from __future__ import annotations

import io
import os
from collections.abc import Sequence
from pathlib import Path
from typing import IO, Any, Union

import numpy as np
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

# PIL's own default pixel limit, in the catalog so settings are read without Pillow.
from graft.catalog import DEFAULT_MAX_PIXELS
from graft.data.storage import is_uri, read_bytes
from graft.errors import ImageError

__all__ = [
    "DEFAULT_MAX_PIXELS",
    "ImageSource",
    "decode_image",
    "describe_source",
    "load_image",
    "to_rgb",
]

_ROWS_PER_BLOCK = 256  # rows converted at a time from 16/32-bit images

ImageSource = Union[str, os.PathLike, bytes, bytearray, memoryview, IO[bytes], Image.Image,
                    np.ndarray]


def describe_source(source: Any) -> str:
    """How an image source is named in messages: its path, else its kind."""
    if isinstance(source, (str, os.PathLike)):
        return os.fspath(source)
    if isinstance(source, (bytes, bytearray, memoryview)):
        return f"<{len(source)} bytes>"
    if isinstance(source, Image.Image):
        return f"<PIL image {source.mode} {source.size[0]}x{source.size[1]}>"
    if isinstance(source, np.ndarray):
        return f"<array {source.dtype} {source.shape}>"
    return os.fspath(getattr(source, "name", "")) or f"<{type(source).__name__}>"


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
        high = float(array.max()) if array.size else 1.0
        out = np.empty(array.shape, np.uint8)
        # In blocks of rows: the float arithmetic of a whole 16-bit image would need ~28 bytes
        # per pixel at once (a 175 KB PNG could ask for gigabytes); the result is the same.
        for start in range(0, array.shape[0], _ROWS_PER_BLOCK):
            block = array[start: start + _ROWS_PER_BLOCK]
            if mode == "F":
                block = block / (max(1.0, high)) * 255.0
            else:
                block = block.astype(np.float64) / (257.0 if high > 255 else 1.0)
            out[start: start + _ROWS_PER_BLOCK] = np.clip(block + 0.5, 0, 255).astype(np.uint8)
        return Image.fromarray(out, mode="L").convert("RGB")
    if mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
        mode = "RGBA"
    if mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        image = image.convert("RGBA")
        background = Image.new("RGBA", image.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, image).convert("RGB")
    return image.convert("RGB")


def _check_pixels(size: tuple[int, int], max_pixels: int | None, name: str) -> None:
    limit = DEFAULT_MAX_PIXELS if max_pixels is None else int(max_pixels)
    width, height = size
    if limit > 0 and width * height > limit:
        raise ImageError(
            name, f"refused as a decompression bomb ({width}x{height} = {width * height:,} "
            f"pixels, over the limit of {limit:,})", kind="too_large"
        )


def _finish(image: Image.Image, min_size: tuple[int, int] | None,
            max_pixels: int | None, name: str) -> Image.Image:
    """Header checks, draft decode, full decode, EXIF orientation and RGB, for an unloaded file."""
    _check_pixels(image.size, max_pixels, name)  # from the header: nothing decoded yet
    if min_size is not None and image.format == "JPEG":
        image.draft("RGB", min_size)
    image.load()
    return to_rgb(ImageOps.exif_transpose(image))


def _from_array(array: np.ndarray, name: str) -> Image.Image:
    if array.dtype != np.uint8 or array.ndim not in (2, 3) or (
            array.ndim == 3 and array.shape[2] not in (1, 3, 4)):
        raise ImageError(
            name, "expected a uint8 array of shape (H, W), (H, W, 3) RGB or (H, W, 4) RGBA. "
            "Convert it first, e.g. np.asarray(image, dtype=np.uint8)."
        )
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[:, :, 0]
    return to_rgb(Image.fromarray(np.ascontiguousarray(array)))


def decode_image(
    source: ImageSource,
    *,
    min_size: tuple[int, int] | None = None,
    max_pixels: int | None = None,
    formats: Sequence[str] | None = None,
) -> Image.Image:
    """Decode an image from any source into an RGB PIL image, oriented as EXIF says.

    Args:
        source: A file path or URI (``s3://bucket/cat.jpg``), the file's bytes, a binary file
            object, a PIL image (an unloaded one from ``Image.open`` decodes exactly like its file)
            or a ``uint8`` array (RGB or RGBA).
        min_size: ``(width, height)`` the caller will resize to; large JPEGs are then decoded at a
            reduced DCT scale no smaller than this (``Image.draft``), several times faster.
        max_pixels: Refuse larger images (decompression bombs) before decoding them; default
            :data:`DEFAULT_MAX_PIXELS`, ``0`` for no limit.
        formats: Only these PIL formats (e.g. the server's few common ones); default: any.

    Raises:
        ImageError: With the reason, for an empty, truncated, unreadable or oversized image.
    """
    name = describe_source(source)
    try:
        if isinstance(source, np.ndarray):
            _check_pixels(source.shape[1::-1] if source.ndim > 1 else (0, 0), max_pixels, name)
            return _from_array(source, name)
        if isinstance(source, Image.Image):
            if isinstance(source, ImageFile.ImageFile) and source.tile:
                return _finish(source, min_size, max_pixels, name)  # not decoded yet
            _check_pixels(source.size, max_pixels, name)
            return to_rgb(ImageOps.exif_transpose(source))
        with _open(source, name, formats) as image:
            return _finish(image, min_size, max_pixels, name)
    except ImageError:
        raise
    except Image.DecompressionBombError as exc:
        raise ImageError(name, f"refused as a decompression bomb ({exc})",
                         kind="too_large") from exc
    except UnidentifiedImageError as exc:
        raise ImageError(name, "not an image PIL can identify", kind="not_image") from exc
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise ImageError(name, f"cannot decode ({type(exc).__name__}: {exc})") from exc


def _open(source: Any, name: str, formats: Sequence[str] | None) -> Image.Image:
    """An encoded image (URI, path, bytes or binary file object) opened, not yet decoded."""
    if is_uri(source):  # s3://...: read the object, then decode its bytes like any others
        source = read_bytes(source)
        if len(source) == 0:
            raise ImageError(name, "empty file (0 bytes)", kind="empty")
        return Image.open(io.BytesIO(source), formats=formats)
    if isinstance(source, (str, os.PathLike)):
        if Path(source).stat().st_size == 0:
            raise ImageError(name, "empty file (0 bytes)", kind="empty")
        return Image.open(source, formats=formats)
    if isinstance(source, (bytes, bytearray, memoryview)):
        if len(source) == 0:
            raise ImageError(name, "empty (0 bytes)", kind="empty")
        return Image.open(io.BytesIO(source), formats=formats)
    if hasattr(source, "read"):
        return Image.open(source, formats=formats)
    raise ImageError(
        name, "not an image source. Expected a path, bytes, a binary file object, a "
        "PIL image or a uint8 array."
    )


def load_image(path: ImageSource, min_size: tuple[int, int] | None = None) -> Image.Image:
    """:func:`decode_image` with the default pixel limit (kept for callers that pass a size)."""
    return decode_image(path, min_size=min_size)
