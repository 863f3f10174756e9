"""Where images live: local paths, or URIs of the filesystems pyarrow reaches (``s3://``, ``gs://``,
``hdfs://``).

A dataset or an image may be given as ``s3://bucket/prefix``; graft lists it once (one recursive
listing, with each object's size and modification time), names every image by its URI, and reads
an image's bytes when it decodes it. Nothing is downloaded ahead: there is no local copy to keep in
step. Credentials and endpoints come from where pyarrow looks for them (for S3: ``AWS_*``
variables, ``~/.aws``, the instance's role; ``AWS_ENDPOINT_URL`` for an S3-compatible server such as
MinIO). Needs ``pyarrow`` (the ``remote`` and ``ray`` extras).

Ray workers get the driver's resolved filesystems (:func:`filesystems_for`, :func:`adopt`), as
Ray Data passes its ``filesystem`` argument: the endpoint and options the driver found travel with
them, and each node still needs its own credentials (an instance role, or ``AWS_*`` variables).
"""

from __future__ import annotations

import os
import re
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from graft.errors import ConfigError, DataError

__all__ = [
    "MAX_OBJECT_BYTES",
    "RemoteFile",
    "adopt",
    "basename",
    "check_local",
    "filesystem",
    "filesystems_for",
    "is_file",
    "is_uri",
    "join",
    "list_files",
    "read_bytes",
    "stat",
]

# scheme://...: two letters at least, so a Windows drive ("C:/x") is never taken for one.
_URI = re.compile(r"^(?P<scheme>[A-Za-z][A-Za-z0-9+.-]+)://(?P<authority>[^/]*)")
_FILESYSTEMS: dict[str, Any] = {}  # "s3://bucket" -> pyarrow filesystem, made once per process
_LOCK = threading.Lock()
_BUCKETS = ("s3", "gs", "gcs")  # the authority is a bucket, part of pyarrow's path
_HOSTS = ("hdfs", "viewfs", "file")  # the authority is a host; the path starts at "/"
# A remote object is read whole (one GET, no random access): anything bigger is not an image.
MAX_OBJECT_BYTES = 256 << 20


@dataclass(frozen=True)
class RemoteFile:
    """One file of a listing: its path below the listed URI (``/`` separators), size, mtime."""

    relpath: str
    size: int
    mtime_ns: int


def is_uri(path: Any) -> bool:
    """True for ``scheme://...`` (a remote object), False for a local path."""
    return isinstance(path, str) and _URI.match(path) is not None


def _key(uri: str) -> str:
    """``scheme://authority`` of a URI graft reads, or a DataError saying why not."""
    match = _URI.match(uri)
    if match is None:
        raise ValueError(f"{uri!r} is not a URI")
    scheme = match["scheme"].lower()
    if scheme not in _BUCKETS + _HOSTS:
        raise DataError(f"{uri}: graft reads s3://, gs:// and hdfs:// URIs (pyarrow's "
                        f"filesystems), not {scheme}://. Copy the images to one of them, or to "
                        f"a local folder.")
    if "@" in match["authority"] or "?" in match["authority"]:
        raise DataError(f"{uri}: give credentials and options in the environment (AWS_*, "
                        f"AWS_ENDPOINT_URL), not in the URI: graft writes paths into models, "
                        f"feature files and reports.")
    return f"{scheme}://{match['authority']}"


def filesystem(uri: str) -> tuple[Any, str]:
    """The pyarrow filesystem serving ``uri`` (one per scheme and bucket, made once) and the path
    within it."""
    key = _key(uri)
    with _LOCK:
        found = _FILESYSTEMS.get(key)
    if found is None:
        from graft.extras import require

        require("remote", command=f"Reading {key}/...")
        from pyarrow import fs as pafs

        try:  # from the bucket alone: the rest of the path may hold anything (spaces, "?")
            found, _ = pafs.FileSystem.from_uri(key + "/")
        except (ValueError, OSError) as error:  # an unknown scheme, an unreachable service
            raise DataError(f"Cannot open {uri}: {error}") from None
        with _LOCK:
            found = _FILESYSTEMS.setdefault(key, found)
    return found, _inner(uri, key)


def _inner(uri: str, key: str) -> str:
    """The path pyarrow's filesystem takes: ``bucket/key`` for object stores, ``/path`` else."""
    scheme = key.split(":", 1)[0]
    if scheme in _BUCKETS:
        return uri[len(scheme) + 3:]
    return uri[len(key):] or "/"


def filesystems_for(paths: Iterable[str]) -> dict[str, Any]:
    """The filesystems the remote ``paths`` need, to send to other processes (see :func:`adopt`)."""
    keys = {_key(path) for path in paths if is_uri(path)}
    return {key: filesystem(key + "/")[0] for key in sorted(keys)}


def adopt(filesystems: dict[str, Any]) -> None:
    """Use these filesystems (from :func:`filesystems_for` in the driver) in this process."""
    with _LOCK:
        _FILESYSTEMS.update(filesystems)


def read_bytes(path: str | os.PathLike, limit: int = MAX_OBJECT_BYTES) -> bytes:
    """The file's content, local or remote (``OSError`` when it cannot be read, or when it is
    over ``limit`` bytes: it is read whole, so its size is checked as it arrives)."""
    if not is_uri(path):
        with open(path, "rb") as handle:
            data = handle.read(limit + 1)
    else:
        fs, inner = filesystem(path)
        with fs.open_input_stream(inner) as stream:
            data = stream.read(limit + 1)
    if len(data) > limit:
        raise OSError(f"over {limit >> 20} MiB, too large for an image file; not read")
    return data


def stat(path: str | os.PathLike) -> tuple[int, int]:
    """``(size, mtime_ns)`` of a local or remote file (``FileNotFoundError`` when missing)."""
    if not is_uri(path):
        result = os.stat(path)  # follows links: the target's size and time
        return int(result.st_size), int(result.st_mtime_ns)
    from pyarrow import fs as pafs

    fs, inner = filesystem(path)
    info = fs.get_file_info(inner)
    if info.type != pafs.FileType.File:
        raise FileNotFoundError(f"{path} is not a file")
    return int(info.size or 0), int(info.mtime_ns or 0)


def is_file(path: str | os.PathLike) -> bool:
    """True when ``path`` (local or remote) is a file that exists (not a folder)."""
    if not is_uri(path):
        return os.path.isfile(path)
    try:
        stat(path)
    except OSError:
        return False
    return True


def check_local(out: str | os.PathLike, what: str = "the result",
                parameter: str = "out") -> None:
    """Refuse a remote ``out``: graft writes models and feature files to local disk.
    ``parameter`` is how the caller names ``out``, for the message."""
    if is_uri(out):
        raise ConfigError(f"{parameter}={os.fspath(out)!r}: graft writes {what} to local disk. "
                          f"Give a local path, and copy it to remote storage afterwards.",
                          parameter=parameter)


def join(root: str | os.PathLike, relpath: str) -> str:
    """``root/relpath`` for a local folder or a URI (an absolute ``relpath`` stands alone)."""
    if is_uri(relpath) or os.path.isabs(relpath):
        return relpath
    if is_uri(root):
        return f"{str(root).rstrip('/')}/{relpath}"
    return os.path.join(os.fspath(root), relpath)


def basename(path: str | os.PathLike) -> str:
    """The last part of a local path or a URI (``s3://bucket/flowers/`` -> ``flowers``)."""
    return os.fspath(path).rstrip("/").rsplit("/", 1)[-1] if is_uri(path) else Path(path).name


def list_files(uri: str) -> Iterator[RemoteFile]:
    """Every file below ``uri``, sorted by path, with size and mtime, from one recursive listing.

    Raises:
        DataError: When nothing exists at ``uri`` or it cannot be listed.
    """
    from pyarrow import fs as pafs

    fs, inner = filesystem(uri)
    inner = inner.rstrip("/")
    try:
        infos = fs.get_file_info(pafs.FileSelector(inner, recursive=True, allow_not_found=True))
    except OSError as error:
        raise DataError(f"Cannot list {uri}: {error}") from None
    files = [info for info in infos if info.type == pafs.FileType.File]
    if not files and fs.get_file_info(inner).type == pafs.FileType.NotFound:
        raise DataError(f"{uri} does not exist (nothing is stored under it).")
    prefix = inner + "/"
    for info in sorted(files, key=lambda info: info.path):
        relpath = info.path[len(prefix):] if info.path.startswith(prefix) else info.base_name
        yield RemoteFile(relpath, int(info.size or 0), int(info.mtime_ns or 0))
