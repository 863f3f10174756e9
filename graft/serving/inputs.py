"""Request bodies -> encoded images, read within the limits. Nothing here reads a path.

Three native shapes (``POST /v1/models/{name}/predict``): a raw image body, a multipart form with
one or more ``file`` fields, or JSON ``{"images": ["<base64>", ...]}``. The image's own bytes
decide whether it is an image; file names and content types are not trusted.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import zlib
from collections.abc import AsyncIterator, Callable
from concurrent.futures import Executor
from typing import Any, TypeVar

from starlette.requests import ClientDisconnect, Request

from graft.serving.errors import ServeError

__all__ = ["decode_base64", "load_json", "native_images", "off_loop", "read_body"]

T = TypeVar("T")

MAX_IMAGES = 1024  # per request; the queue limit applies as well
# A refused body is still read (and dropped) up to this many bytes before the 413 goes out:
# closing a connection with unread data resets it, and most clients then lose the answer.
DRAIN_BYTES = 64 * 1024 * 1024
# Bodies larger than this are parsed (JSON and base64, v2 requests, inflated) in the decoding
# pool, not on the event loop, which a large body holds, and every other request with it
# (benchmarks/serve_parse.py). The parsers hold the GIL while in C, so the loop still waits for
# the longest single step (json.loads); base64 is decoded in chunks for that reason.
OFF_LOOP_BYTES = 1024 * 1024
_BASE64_CHUNK = 1024 * 1024  # characters (a multiple of 4) decoded per call


async def off_loop(pool: Executor | None, size: int, function: Callable[..., T], *args: Any) -> T:
    """``function(*args)``: in ``pool`` when it parses more than :data:`OFF_LOOP_BYTES`."""
    if pool is None or size <= OFF_LOOP_BYTES:
        return function(*args)
    return await asyncio.get_running_loop().run_in_executor(pool, function, *args)


def _too_large(limit: int, size: str) -> ServeError:
    return ServeError(413, f"Request body too large ({size}; the limit is {limit:,} bytes, set by "
                           f"max_body_mb).", "body_too_large", parameter="max_body_mb")


async def read_body(request: Request, limit: int, pool: Executor | None = None) -> bytes:
    """The request body, refused with 413 past ``limit`` bytes: from ``Content-Length`` before
    reading, and while streaming (chunked bodies), and again after decompression (in ``pool``
    for a large body)."""
    declared = request.headers.get("content-length")
    if declared is not None:
        try:
            length = int(declared)
        except ValueError:
            raise ServeError(400, f"Bad Content-Length header {declared!r}.") from None
        if length > limit:
            # A client that sent "Expect: 100-continue" waits for a go-ahead before the body:
            # answer at once. Others are sending it: read it away first (see DRAIN_BYTES).
            if request.headers.get("expect", "").strip().lower() != "100-continue":
                await _drain(request.stream())
            raise _too_large(limit, f"Content-Length {length:,}")
    chunks, size = [], 0
    stream = request.stream()
    try:
        async for chunk in stream:
            size += len(chunk)
            if size > limit:
                await _drain(stream)
                raise _too_large(limit, f"over {limit:,} bytes received")
            chunks.append(chunk)
    except ClientDisconnect:
        raise ServeError(400, "The client went away before sending the whole body.",
                         "client_disconnected") from None
    body = b"".join(chunks)
    encoding = request.headers.get("content-encoding", "identity").strip().lower()
    if encoding in ("gzip", "deflate"):
        # sized by what it may inflate to: a small bomb would hold the loop as long as a big body
        body = await off_loop(pool, limit, _decompress, body, encoding, limit)
    elif encoding not in ("identity", ""):
        raise ServeError(415, f"Unsupported Content-Encoding {encoding!r}: use gzip, deflate or "
                              f"none.", "bad_request")
    return body


async def _drain(stream: AsyncIterator[bytes]) -> None:
    """Read and drop the rest of a refused body, up to :data:`DRAIN_BYTES`."""
    received = 0
    try:
        async for chunk in stream:
            received += len(chunk)
            if received > DRAIN_BYTES:
                return
    except ClientDisconnect:
        return


def _decompress(body: bytes, encoding: str, limit: int) -> bytes:
    inflater = zlib.decompressobj(wbits=31 if encoding == "gzip" else 15)
    try:
        data = inflater.decompress(body, limit + 1)
    except zlib.error as error:
        raise ServeError(400, f"Body is not valid {encoding} data ({error}).") from None
    if len(data) > limit or inflater.unconsumed_tail:
        raise _too_large(limit, "after decompression")
    if not inflater.eof:
        raise ServeError(400, f"Body is truncated {encoding} data.")
    return data


def decode_base64(text: Any, where: str) -> bytes:
    """Strict base64 (standard alphabet, padding optional; a ``data:`` URL prefix is allowed)."""
    if isinstance(text, bytes):
        text = text.decode("ascii", errors="replace")
    if not isinstance(text, str):
        raise ServeError(400, f"{where} must be a base64 string, got {type(text).__name__}.",
                         "bad_base64")
    if text.startswith("data:") and "," in text:
        text = text.split(",", 1)[1]
    try:
        try:
            return _b64decode(text)
        except (binascii.Error, ValueError):  # wrapped lines (MIME base64), or not base64
            return _b64decode("".join(text.split()))
    except (binascii.Error, ValueError) as error:
        raise ServeError(400, f"{where} is not valid base64 ({error}).", "bad_base64") from None


def _b64decode(text: str) -> bytes:
    """Strict base64 of ``text`` (padding optional), a chunk at a time: each call holds the GIL
    for a few milliseconds, not the whole body's worth. Whole chunks before the first ``=`` are
    decoded alone; the rest, padding and all, in one call, so the result (and what is refused)
    is the same as one call over the whole text."""
    text += "=" * (-len(text) % 4)
    pad = text.find("=")  # the last chunk also holds the group before the first "="
    head = ((len(text) if pad < 0 else max(0, pad - 1)) // _BASE64_CHUNK) * _BASE64_CHUNK
    parts = [base64.b64decode(text[i:i + _BASE64_CHUNK], validate=True)
             for i in range(0, head, _BASE64_CHUNK)]
    parts.append(base64.b64decode(text[head:], validate=True))
    return b"".join(parts)


def _check_count(count: int) -> None:
    if count == 0:
        raise ServeError(400, "No image in the request. Send an image as the body, as 'file' "
                              "fields of a multipart form, or as JSON {\"images\": [base64...]}.",
                         "empty")
    if count > MAX_IMAGES:
        raise ServeError(413, f"{count} images in one request; at most {MAX_IMAGES}.",
                         "too_many_images")


async def native_images(request: Request, body: bytes, pool: Executor | None = None
                        ) -> list[bytes]:
    """The encoded images of a native predict request, in order (a large body parsed in
    ``pool``, off the event loop)."""
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if kind == "multipart/form-data":  # stays on the loop, briefly: benchmarks/serve_parse.py
        images = await _multipart(request, body)
    elif kind == "application/json" or kind.endswith("+json"):
        images = await off_loop(pool, len(body), _json_images, body)
    else:
        images = [body] if body else []
    _check_count(len(images))
    if any(not image for image in images):
        index = next(i for i, image in enumerate(images) if not image)
        raise ServeError(400, f"Image {index} is empty (0 bytes).", "empty")
    return images


def load_json(data: bytes, what: str = "Body") -> Any:
    """Parsed JSON, or a 400 that says why (nesting too deep included)."""
    try:
        return json.loads(data)
    except (ValueError, UnicodeDecodeError, RecursionError) as error:
        raise ServeError(400, f"{what} is not valid JSON ({error}).") from None


def _json_images(body: bytes) -> list[bytes]:
    data = load_json(body)
    if not isinstance(data, dict) or not isinstance(data.get("images"), list):
        raise ServeError(400, 'JSON body must be {"images": ["<base64>", ...]}.')
    return [decode_base64(text, f"images[{i}]") for i, text in enumerate(data["images"])]


async def _multipart(request: Request, body: bytes) -> list[bytes]:
    async def replay() -> dict[str, Any]:
        return {"type": "http.request", "body": body, "more_body": False}

    try:
        form = await Request(request.scope, replay).form(max_files=MAX_IMAGES, max_fields=64)
    except Exception as error:  # noqa: BLE001 - multipart's errors have no common base
        raise ServeError(400, f"Cannot parse the multipart form ({error}).") from None
    try:
        files = form.getlist("file")
        if not files:
            raise ServeError(400, f"The multipart form has no 'file' field (fields: "
                                  f"{sorted(set(form.keys())) or 'none'}).", "empty")
        images = []
        for item in files:
            if isinstance(item, str):
                raise ServeError(400, "A 'file' field holds text, not a file upload.")
            images.append(await item.read())
        return images
    finally:
        await form.close()
