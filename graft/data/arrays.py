"""Images given as arrays: a ``.npz`` file, CIFAR-10's binary batches, or a ``uint8`` array in
Python.

graft's pipeline works on image files (decoded by the one :func:`graft.inference.preprocess`,
keyed in the feature cache, listed in reports), so an array dataset is written once as lossless
PNG files into a folder of the cache named by the SHA-256 of its content
(``<cache>/arrays/<digest>/``): the same arrays give the same folder, whose features are then
cached like any other files, and nothing is written twice. ``.npz`` files are read with
``allow_pickle=False``: graft never unpickles data.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from graft.config import resolve_cache_dir
from graft.errors import DataError
from graft.system import available_cpus

__all__ = ["ArrayData", "array_folder", "array_images", "is_cifar10_binary", "load_npz",
           "read_cifar10_binary"]

_SPLITS = ("train", "val", "test")
_CIFAR_RECORD = 1 + 32 * 32 * 3
_CIFAR_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse",
                  "ship", "truck")


class ArrayData:
    """Images ``x`` (N, H, W[, 3]) ``uint8``, labels ``y`` (N,), optional split (N,)."""

    def __init__(self, x: np.ndarray, y: np.ndarray, class_names: Sequence[str] | None = None,
                 split: np.ndarray | None = None, source: str = "arrays") -> None:
        self.x, self.source = _check_images(x, source), source
        y = np.asarray(y)
        if y.dtype.kind == "S":  # byte strings (np.savez of bytes labels): names are text
            y = np.char.decode(y, "utf-8")
        if class_names is not None:
            class_names = [n.decode("utf-8") if isinstance(n, bytes) else str(n)
                           for n in class_names]
        if y.ndim != 1 or len(y) != len(self.x):
            raise DataError(f"{source}: y must hold one label per image ({len(self.x)}); got "
                            f"shape {y.shape}.")
        if y.dtype.kind == "U":
            names = sorted({str(v) for v in y})
            self.class_names = list(class_names) if class_names is not None else names
            index = {name: i for i, name in enumerate(self.class_names)}
            unknown = sorted(set(names) - set(index))
            if unknown:
                raise DataError(f"{source}: labels {unknown[:5]} are not in class_names.")
            self.y = np.array([index[str(v)] for v in y], dtype=np.int64)
        elif y.dtype.kind in "iu":
            self.y = y.astype(np.int64)
            count = int(self.y.max()) + 1 if len(self.y) else 0
            self.class_names = ([str(c) for c in class_names] if class_names is not None
                                else [str(i) for i in range(count)])
            if len(self.y) and (self.y.min() < 0 or self.y.max() >= len(self.class_names)):
                raise DataError(f"{source}: labels run from {self.y.min()} to {self.y.max()}, "
                                f"but there are {len(self.class_names)} class names.")
        else:
            raise DataError(f"{source}: y must be integers or strings; got {y.dtype}.")
        if len(set(self.class_names)) != len(self.class_names) or any(
                not n or "/" in n or n in (".", "..") for n in self.class_names):
            raise DataError(f"{source}: class names must be distinct, non-empty and without "
                            f"'/'; got {self.class_names[:10]}.")
        self.split = None
        if split is not None:
            split = np.asarray(split).astype(str)
            bad = sorted(set(split.tolist()) - set(_SPLITS))
            if split.shape != self.y.shape or bad:
                raise DataError(f"{source}: split must hold one of train/val/test per image; "
                                f"got {bad[:3] or split.shape}.")
            self.split = split

    def digest(self) -> str:
        """SHA-256 of everything the folder is made from (pixels, labels, names, split)."""
        digest = hashlib.sha256()
        digest.update(repr((self.x.shape, self.class_names)).encode())
        for start in range(0, len(self.x), 4096):
            digest.update(np.ascontiguousarray(self.x[start:start + 4096]).tobytes())
        digest.update(self.y.tobytes())
        if self.split is not None:
            digest.update("\0".join(self.split.tolist()).encode())
        return digest.hexdigest()


def _check_images(x: np.ndarray, source: str) -> np.ndarray:
    x = np.asarray(x)
    if x.dtype == object:
        raise DataError(f"{source}: the images are an object array; graft needs uint8 pixels "
                        f"(N, H, W, 3) or (N, H, W).")
    if x.dtype != np.uint8 or x.ndim not in (3, 4) or (x.ndim == 4 and x.shape[3] not in (1, 3)):
        raise DataError(f"{source}: images must be uint8 of shape (N, H, W, 3) or (N, H, W); got "
                        f"{x.dtype} {x.shape}. Convert with x.astype(np.uint8) (0-255 pixels).")
    return x[..., 0] if x.ndim == 4 and x.shape[3] == 1 else x


def load_npz(path: str | os.PathLike) -> ArrayData:
    """``x``, ``y`` and the optional ``class_names`` and ``split`` of a ``.npz`` file.

    Raises:
        DataError: For a missing key, an object (pickled) array, or bad shapes.
    """
    import zipfile
    import zlib

    path = Path(path)
    if not zipfile.is_zipfile(path):
        raise DataError(f"{path} is not a .npz file (np.savez writes a zip archive of arrays).")
    try:
        with np.load(path, allow_pickle=False) as data:
            missing = [k for k in ("x", "y") if k not in data.files]
            if missing:
                raise DataError(f"{path} has no {missing} (it has {data.files}): graft reads "
                                f"x (N, H, W, 3) uint8 images and y (N,) labels.")
            x, y = data["x"], data["y"]
            names = data["class_names"].tolist() if "class_names" in data.files else None
            split = data["split"] if "split" in data.files else None
    except DataError:
        raise
    except ValueError as error:
        if "pickle" in str(error).lower():
            raise DataError(
                f"{path} holds an object array, which only pickle can read; graft never "
                f"unpickles files (running code from data). Save x as uint8 and y, class_names "
                f"and split as int or str arrays (np.savez(..., y=np.array(labels, dtype=str)))."
            ) from None
        raise DataError(f"{path} is not a readable .npz file: {error}.") from None
    except (OSError, EOFError, zipfile.BadZipFile, zlib.error) as error:
        raise DataError(f"{path} is not a readable .npz file: {error}.") from None
    return ArrayData(x, y, names, split, source=str(path))


def is_cifar10_binary(folder: str | os.PathLike) -> bool:
    """Whether ``folder`` holds CIFAR-10's binary batches (``data_batch_1.bin`` ...)."""
    folder = Path(folder)
    return folder.is_dir() and (folder / "data_batch_1.bin").is_file()


def read_cifar10_binary(folder: str | os.PathLike) -> ArrayData:
    """CIFAR-10's binary version: ``data_batch_*.bin`` (train) and ``test_batch.bin`` (test),
    records of 1 label byte and 3,072 bytes of planar 32x32 RGB; names from
    ``batches.meta.txt``."""
    folder = Path(folder)
    images, labels, split = [], [], []
    batches = sorted(folder.glob("data_batch_*.bin")) + sorted(folder.glob("test_batch.bin"))
    for batch in batches:
        raw = np.fromfile(batch, dtype=np.uint8)
        if raw.size % _CIFAR_RECORD:
            raise DataError(f"{batch} is not a CIFAR-10 binary batch ({raw.size:,} bytes is not "
                            f"a whole number of {_CIFAR_RECORD}-byte records).")
        records = raw.reshape(-1, _CIFAR_RECORD)
        labels.append(records[:, 0].astype(np.int64))
        images.append(records[:, 1:].reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
        split += ["test" if batch.name.startswith("test") else "train"] * len(records)
    meta = folder / "batches.meta.txt"
    names = ([line.strip() for line in meta.read_text().splitlines() if line.strip()]
             if meta.is_file() else list(_CIFAR_CLASSES))
    return ArrayData(np.concatenate(images), np.concatenate(labels), names, np.array(split),
                     source=str(folder))


def _write_png(path: Path, pixels: np.ndarray) -> None:
    from PIL import Image

    Image.fromarray(pixels).save(path, "PNG", compress_level=1)


def _materialize(target: Path, jobs: list[tuple[Path, np.ndarray]], progress: bool,
                 what: str) -> Path:
    """Write the PNGs into a temporary folder renamed to ``target`` (unless already there)."""
    from tqdm.auto import tqdm

    if target.is_dir():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".writing-", dir=target.parent))
    try:
        for folder in {staging / relative.parent for relative, _ in jobs}:
            folder.mkdir(parents=True, exist_ok=True)
        with ThreadPoolExecutor(min(8, available_cpus())) as pool, \
                tqdm(total=len(jobs), unit="img", desc=f"Writing {what} as PNG files",
                     disable=not progress, dynamic_ncols=True, leave=False) as bar:
            for _ in pool.map(lambda job: _write_png(staging / job[0], job[1]), jobs):
                bar.update()
        os.chmod(staging, 0o755)  # mkdtemp makes it private; the cache's folders are not
        try:
            os.replace(staging, target)
        except OSError:  # written meanwhile by another process: theirs is the same
            if not target.is_dir():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def array_folder(data: ArrayData, *, cache_dir: str | os.PathLike | None = None,
                 progress: bool = True) -> Path:
    """The image folder of ``data`` in the cache (written on first use): ``<split>/<class>/``
    with a split, else ``<class>/``, one ``NNNNNN.png`` per image in array order."""
    target = resolve_cache_dir(cache_dir) / "arrays" / data.digest()[:32]
    jobs = []
    for index in range(len(data.x)):
        name = data.class_names[int(data.y[index])]
        folder = Path(data.split[index], name) if data.split is not None else Path(name)
        jobs.append((folder / f"{index:06d}.png", data.x[index]))
    return _materialize(target, jobs, progress, data.source)


def array_images(x: np.ndarray, *, cache_dir: str | os.PathLike | None = None,
                 progress: bool = False) -> list[Path]:
    """Unlabeled images (N, H, W[, 3]) ``uint8`` as PNG files in the cache, in order, each named
    by the SHA-256 of its pixels (``<cache>/arrays/by-content/ab/abcd....png``): the same image,
    in any array, is the same file, so its features are extracted once."""
    from tqdm.auto import tqdm

    x = _check_images(x, "images")
    store = resolve_cache_dir(cache_dir) / "arrays" / "by-content"
    paths = []
    for pixels in tqdm(x, unit="img", desc="Writing images as PNG files", leave=False,
                       disable=not progress, dynamic_ncols=True):
        digest = hashlib.sha256(repr(pixels.shape).encode() + pixels.tobytes()).hexdigest()
        path = store / digest[:2] / f"{digest[:40]}.png"
        if not path.is_file():
            path.parent.mkdir(parents=True, exist_ok=True)
            handle, partial = tempfile.mkstemp(suffix=".tmp", prefix=".", dir=path.parent)
            os.close(handle)
            _write_png(Path(partial), pixels)
            os.replace(partial, path)
        paths.append(path)
    return paths
