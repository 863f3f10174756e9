"""Unpacking downloaded tar and zip archives safely.

An archive is data from the internet: a member may try to escape the destination (``../x``, an
absolute path, a link pointing outside), or expand far beyond its size (a zip bomb). Every member
is checked before anything is written: regular files and folders only (no links, devices or
FIFOs), every path inside the destination, and the member count and total size (as extracted,
counted while writing, not trusted from the headers) under limits. The archive is unpacked into
a fresh temporary folder (beside the destination when the caller says where), so a refused or
failed archive leaves nothing.
"""

from __future__ import annotations

import os
import shutil
import stat
import tarfile
import tempfile
import zipfile
from collections.abc import Callable
from pathlib import Path, PurePosixPath
from typing import IO

from graft.errors import DataError

__all__ = ["MAX_MEMBERS", "MAX_RATIO", "MIN_BYTES", "UnsafeArchiveError", "unpack"]

# An archive may expand to MAX_RATIO times its own size, and to at least MIN_BYTES: image
# datasets barely compress (JPEGs; CIFAR-10's gzipped batches expand 1.1x), a zip bomb expands
# a thousand-fold.
MAX_RATIO = 20
MIN_BYTES = 64 * 2**20
MAX_MEMBERS = 2_000_000
_CHUNK = 1 << 20


class UnsafeArchiveError(DataError):
    """The archive would write outside its folder, holds links or devices, or is too large."""


def _safe_name(name: str, archive: Path) -> PurePosixPath:
    path = PurePosixPath(name.replace("\\", "/"))
    if path.is_absolute() or (path.parts and ":" in path.parts[0]) or ".." in path.parts:
        raise UnsafeArchiveError(f"{archive.name} holds {name!r}, a path outside the folder it "
                                 f"unpacks to: refused (nothing was extracted).")
    return path


class _Budget:
    """Bytes and members written so far, against the limits."""

    def __init__(self, archive: Path, max_bytes: int, max_members: int) -> None:
        self.archive, self.max_bytes, self.max_members = archive, max_bytes, max_members
        self.bytes = self.members = 0

    def member(self) -> None:
        self.members += 1
        if self.members > self.max_members:
            raise UnsafeArchiveError(f"{self.archive.name} has more than {self.max_members:,} "
                                     f"members: refused.")

    def add(self, size: int) -> None:
        self.bytes += size
        if self.bytes > self.max_bytes:
            raise UnsafeArchiveError(
                f"{self.archive.name} expands past {self.max_bytes:,} bytes (a zip bomb, or an "
                f"archive far larger than the dataset it should hold): refused.")


def _copy(source, target: Path, budget: _Budget) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target, "wb") as out:
        for block in iter(lambda: source.read(_CHUNK), b""):
            budget.add(len(block))
            out.write(block)


def _write(archive: Path, into: Path, budget: _Budget,
           members: list[tuple[str, bool, Callable[[], IO[bytes] | None]]]) -> None:
    """Write checked members (name, is a folder, opener), counting the bytes as they come."""
    budget.bytes = 0  # the declared sizes were counted; now the real ones
    for name, is_dir, open_member in members:
        target = into.joinpath(*_safe_name(name, archive).parts)
        if is_dir:
            target.mkdir(parents=True, exist_ok=True)
            continue
        source = open_member()
        if source is not None:
            with source:
                _copy(source, target, budget)


def _unpack_tar(archive: Path, into: Path, budget: _Budget) -> None:
    with tarfile.open(archive, "r:*") as tar:
        members = tar.getmembers()
        for member in members:  # everything checked before anything is written
            _safe_name(member.name, archive)
            if not (member.isfile() or member.isdir()):
                kind = "link" if member.issym() or member.islnk() else "special file"
                raise UnsafeArchiveError(f"{archive.name} holds {member.name!r}, a {kind}: "
                                         f"refused (nothing was extracted).")
            budget.member()
            budget.add(0 if member.isdir() else member.size)  # declared sizes, first
        _write(archive, into, budget, [(m.name, m.isdir(), lambda m=m: tar.extractfile(m))
                                       for m in members])


def _unpack_zip(archive: Path, into: Path, budget: _Budget) -> None:
    with zipfile.ZipFile(archive) as bundle:
        infos = bundle.infolist()
        for info in infos:
            _safe_name(info.filename, archive)
            kind = stat.S_IFMT(info.external_attr >> 16)  # 0 when the zip records no type
            if kind and kind not in (stat.S_IFREG, stat.S_IFDIR):
                raise UnsafeArchiveError(f"{archive.name} holds {info.filename!r}, a link or "
                                         f"special file: refused (nothing was extracted).")
            budget.member()
            budget.add(info.file_size)  # declared sizes first; then counted as written
        _write(archive, into, budget, [(i.filename, i.is_dir(), lambda i=i: bundle.open(i))
                                       for i in infos])


def unpack(archive: str | os.PathLike, *, max_bytes: int | None = None,
           max_members: int = MAX_MEMBERS, into: str | os.PathLike | None = None) -> Path:
    """Unpack a ``.tar``, ``.tar.gz``/``.tgz`` or ``.zip`` into a new temporary folder (inside
    ``into``, default beside the archive) and return that folder (the caller moves what it needs
    and deletes the rest).

    Args:
        max_bytes: The most bytes it may expand to (default: :data:`MAX_RATIO` times its size,
            at least :data:`MIN_BYTES`).

    Raises:
        UnsafeArchiveError: For a member outside the folder, a link or special file, or an
            archive over ``max_members`` members or ``max_bytes`` extracted (nothing is left).
        DataError: For a file that is not a readable tar or zip archive, or a folder that cannot
            be written.
    """
    import lzma
    import zlib

    archive = Path(archive)
    if max_bytes is None:
        max_bytes = max(MIN_BYTES, MAX_RATIO * archive.stat().st_size)
    budget = _Budget(archive, max_bytes, max_members)
    folder: Path | None = None
    try:
        folder = Path(tempfile.mkdtemp(prefix=".graft-unpack-",
                                       dir=into if into is not None else archive.parent))
        if zipfile.is_zipfile(archive):
            _unpack_zip(archive, folder, budget)
        elif tarfile.is_tarfile(archive):
            _unpack_tar(archive, folder, budget)
        else:
            raise DataError(f"{archive} is not a tar or zip archive.")
    except (tarfile.TarError, zipfile.BadZipFile, EOFError, OSError, zlib.error,
            lzma.LZMAError, NotImplementedError, RuntimeError) as error:
        if folder is not None:
            shutil.rmtree(folder, ignore_errors=True)
        raise DataError(f"Cannot unpack {archive.name}: {error}.") from None
    except BaseException:
        if folder is not None:
            shutil.rmtree(folder, ignore_errors=True)
        raise
    return folder
