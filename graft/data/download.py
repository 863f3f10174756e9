"""Downloading a file by HTTP(S): streamed, resumable, checked against its SHA-256 before use.

The file grows as ``NAME.part`` beside its destination. A dropped connection is resumed where it
stopped (an HTTP ``Range`` request), a few times within one call and again on the next call;
a server that ignores ``Range`` is read from the start. Only a complete file whose SHA-256
matches is renamed into place; a mismatch deletes it, so nothing half-written or tampered with is
ever left where it would be used.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from graft.errors import DataError

__all__ = ["ChecksumError", "DownloadError", "download", "sha256_of", "verify"]

_CHUNK = 1 << 20
_RETRIES = 5  # resumed attempts within one call, each after a connection that made progress


class DownloadError(DataError):
    """The file cannot be fetched (offline, refused, not found)."""


class ChecksumError(DataError):
    """The file's SHA-256 is not the pinned one: it was deleted."""


def sha256_of(path: str | os.PathLike) -> str:
    """SHA-256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(_CHUNK), b""):
            digest.update(block)
    return digest.hexdigest()


@dataclass
class _Attempt:
    received: int  # bytes in the .part file after this attempt
    total: int | None  # the file's full size, when the server said


def _open(url: str, offset: int, timeout: float):
    request = urllib.request.Request(url, headers={"User-Agent": "graft", "Accept-Encoding":
                                                   "identity"})
    if offset:
        request.add_header("Range", f"bytes={offset}-")
    return urllib.request.urlopen(request, timeout=timeout)


def _attempt(url: str, part: Path, timeout: float, bar) -> _Attempt:
    """Append what the server sends to ``part`` (from its current size); return the sizes."""
    offset = part.stat().st_size if part.exists() else 0
    try:
        response = _open(url, offset, timeout)
    except urllib.error.HTTPError as error:
        if error.code == 416 and offset:  # asked past the end: the part is already whole
            return _Attempt(offset, offset)
        raise
    with response:
        status = response.status
        length = response.headers.get("Content-Length")
        if status == 206:
            total = _range_total(response.headers.get("Content-Range"))
        else:  # 200: the whole file, whatever we asked for
            offset, total = 0, int(length) if length and length.isdigit() else None
        if bar is not None:
            bar.total, bar.n = total, offset
            bar.refresh()
        with open(part, "ab" if offset else "wb") as out:
            for block in iter(lambda: response.read(_CHUNK), b""):
                out.write(block)
                if bar is not None:
                    bar.update(len(block))
    return _Attempt(part.stat().st_size, total)


def _range_total(header: str | None) -> int | None:
    """The full size from ``Content-Range: bytes a-b/total``."""
    if header and "/" in header:
        tail = header.rsplit("/", 1)[1].strip()
        if tail.isdigit():
            return int(tail)
    return None


def download(url: str, dest: str | os.PathLike, *, sha256: str | None, size: int | None = None,
             progress: bool = True, timeout: float = 60.0, hint: str = "") -> Path:
    """Download ``url`` to ``dest`` (resuming a ``dest.part`` left by an earlier try) and check
    its SHA-256; return ``dest``. A ``dest`` already there with the right checksum is kept.

    Args:
        sha256: The pinned checksum (hex); None skips the check (only when the user says so).
        size: The expected size in bytes, for the progress bar before the server answers.
        hint: Added to the error when the file cannot be fetched (what to do offline).

    Raises:
        DownloadError: When the server cannot be reached or refuses, after the retries.
        ChecksumError: When the downloaded file's SHA-256 is not ``sha256`` (it is deleted).
    """
    from tqdm.auto import tqdm

    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    if dest.exists() and (sha256 is None or sha256_of(dest) == sha256.lower()):
        return dest
    part = dest.with_name(dest.name + ".part")
    bar = tqdm(total=size, unit="B", unit_scale=True, unit_divisor=1024, desc=dest.name,
               disable=not progress, dynamic_ncols=True, leave=False)
    error: BaseException | None = None
    try:
        for _ in range(_RETRIES + 1):
            before = part.stat().st_size if part.exists() else 0
            try:
                got = _attempt(url, part, timeout, bar)
                if got.total is None or got.received >= got.total:
                    error = None
                    break
                error = OSError(f"connection closed after {got.received:,} of {got.total:,} "
                                f"bytes")
            except urllib.error.HTTPError as http_error:
                raise DownloadError(f"Cannot download {url}: HTTP {http_error.code} "
                                    f"{http_error.reason}.{hint}") from None
            except ValueError as bad:  # a malformed URL (http.client.InvalidURL and kin)
                raise DownloadError(f"Cannot download {url}: {bad}.") from None
            except (OSError, http.client.HTTPException) as dropped:  # URLError is an OSError
                error = dropped
            if (part.stat().st_size if part.exists() else 0) <= before:
                break  # no progress (offline, refused): retrying would not help
            time.sleep(0.2)  # dropped mid-file: resume from what the .part holds
        if error is not None:
            reason = getattr(error, "reason", error)
            kept = (f" The {part.stat().st_size:,} bytes received are kept in {part}: running "
                    f"the command again resumes from there." if part.exists() and
                    part.stat().st_size else "")
            raise DownloadError(f"Cannot download {url}: {reason}.{kept}{hint}")
    finally:
        bar.close()
    verify(part, sha256, url=url)
    os.replace(part, dest)
    return dest


def verify(path: Path, sha256: str | None, *, url: str = "", delete: bool = True) -> None:
    """Check ``path`` against ``sha256``; on a mismatch raise :class:`ChecksumError`, deleting
    the file when it is a download (``delete``; never a file the user gave)."""
    if sha256 is None:
        return
    actual = sha256_of(path)
    if actual != sha256.lower():
        if delete:
            path.unlink(missing_ok=True)
        source = f" from {url}" if url else ""
        fate = "and was deleted" if delete else "and was left as it is"
        raise ChecksumError(
            f"{path if not delete else path.name.removesuffix('.part')}{source} has SHA-256 "
            f"{actual}, not the pinned "
            f"{sha256.lower()}: it is not the published file (changed upstream, a broken mirror, "
            f"or tampered with), {fate}. If you trust this file, pass sha256={actual}.",
            parameter="sha256")
