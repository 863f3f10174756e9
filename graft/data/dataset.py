"""Finding labeled images: class folders, pre-split folders or a CSV, and stable splits."""

from __future__ import annotations

import csv
import hashlib
import logging
import os
import re
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from graft.data import storage
from graft.errors import ConfigError, DataError

__all__ = [
    "IMAGE_EXTENSIONS",
    "SPLITS",
    "DatasetStream",
    "ImageDataset",
    "Sample",
    "SplitRule",
    "assign_splits",
    "check_output_dir",
    "compute_splits",
    "count_by_split",
    "is_image_file",
    "iter_image_files",
    "scan_dataset",
    "split_fraction",
    "spread_indices",
    "stream_dataset",
]

SPLITS = ("train", "val", "test")
IMAGE_EXTENSIONS = frozenset(
    {".jpg", ".jpeg", ".jpe", ".jfif", ".png", ".gif", ".bmp", ".webp", ".tif", ".tiff"}
)
_SPLIT_ALIASES = {"train": "train", "training": "train", "val": "val", "valid": "val",
                  "validation": "val", "test": "test", "testing": "test"}
_NOHASH = re.compile(r"_nohash_.*$")
_log = logging.getLogger("graft.data")
_told: set[tuple[str, str]] = set()  # (root, folder) of the ignored folders already named


@dataclass(frozen=True, slots=True)
class Sample:
    """One labeled image. ``relpath`` is relative to the dataset root, with ``/`` separators.

    ``path`` is a string (a local path, or a URI such as ``s3://bucket/cats/1.jpg``): a million
    samples hold a million of them, and a string costs a third of a ``Path``. ``stamp`` is the
    file's ``(size, mtime_ns)`` when the listing gave it (remote files: no request per image to
    look it up again). ``view`` 0 is the image itself; ``view`` k > 0 is its k-th random augmented
    view (``augment_views`` in ``graft.train``), reproducible from the file and k.
    """

    path: str
    relpath: str
    label: str
    split: str = ""
    view: int = 0
    stamp: tuple[int, int] | None = None


@dataclass
class ImageDataset:
    """A list of labeled images and where they came from.

    Attributes:
        root: The folder (or the CSV file's folder) that ``relpath`` is relative to: a ``Path``,
            or a URI string for remote data (``s3://bucket/flowers``).
        samples: The images, in a deterministic order (sorted by relative path).
        classes: Label names, sorted; index ``i`` is class ``i`` everywhere in graft.
        layout: ``"folders"``, ``"presplit"`` or ``"csv"``.
        split_source: ``"folders"`` when the splits were given by the data, ``"hash"`` when graft
            assigned them (see :func:`assign_splits`), ``""`` when not assigned yet.
    """

    root: Path | str
    samples: list[Sample]
    classes: list[str]
    layout: str
    split_source: str = ""
    split_params: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.samples)

    def counts(self) -> dict[str, dict[str, int]]:
        """``{split: {label: count}}`` (split ``""`` when unassigned)."""
        return count_by_split([s.split for s in self.samples], [s.label for s in self.samples])


def count_by_split(splits: Iterable[str], labels: Iterable[str]) -> dict[str, dict[str, int]]:
    """``{split: {label: count}}``, splits in train/val/test order, labels sorted."""
    result: dict[str, Counter] = {}
    for split, label in zip(splits, labels):
        result.setdefault(str(split), Counter())[str(label)] += 1
    order = {name: i for i, name in enumerate(SPLITS)}
    return {split: dict(sorted(result[split].items()))
            for split in sorted(result, key=lambda s: (order.get(s, len(order)), s))}


def is_image_file(path: str | os.PathLike) -> bool:
    """True for a file whose extension is one graft reads (hidden files never are)."""
    name = os.path.basename(os.fspath(path))
    return not name.startswith(".") and os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS


def iter_image_files(path: str | os.PathLike) -> Iterator[Path | str]:
    """Yield image files under ``path`` (a file or a folder), streaming, in the order of their
    relative paths (a folder sorts as its name and ``/``, so every listing of graft agrees).

    Hidden files and non-image files (``.txt``, ``.DS_Store``) are skipped quietly. Memory stays
    flat: one folder's names at a time. A URI (``s3://bucket/photos``) yields the URIs of the
    images below it, from one listing (one file given by its URI is yielded as it is).
    """
    if storage.is_uri(path):
        yield from _iter_remote_images(str(path))
        return
    path = Path(path)
    if path.is_file():
        yield path
        return
    if not path.is_dir():
        raise DataError(f"{path} does not exist. Give an image file or a folder of images.")
    for file, _ in _sorted_files(os.fspath(path), ""):
        yield Path(file)


def _iter_remote_images(uri: str) -> Iterator[str]:
    if storage.is_file(uri):  # one object, named: yielded whatever its name, as a local file is
        yield uri
        return
    for file in storage.list_files(uri):
        if _visible(file.relpath) and is_image_file(file.relpath):
            yield storage.join(uri, file.relpath)


def _visible(relpath: str) -> bool:
    return not any(part.startswith(".") for part in relpath.split("/"))


MODEL_MARKER = "graft.json"  # a folder holding it is a graft model directory, never a class


def _class_dirs(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")
                  and not (p / MODEL_MARKER).is_file())


def _split_folders(root: str | Path, names: Iterable[str],
                   holds_images: Callable[[str], bool]) -> dict[str, str] | None:
    """``{split: folder name}`` when the folders ``names`` under ``root`` include a train folder
    whose images lie in class folders (pre-split data), else None.

    The layout is decided by where the images are: beside the split folders, a folder holding no
    images (``splits/``, ``annotations/``) is ignored (named with ``-v``), and one holding images
    is ignored with a warning. ``holds_images(name)``: whether folder ``name`` holds any image.
    """
    names = sorted(names)
    mapped = {name: _SPLIT_ALIASES[name.lower()] for name in names
              if name.lower() in _SPLIT_ALIASES}
    if "train" not in mapped.values():
        return None
    result: dict[str, str] = {}
    for folder, split in mapped.items():
        if split in result:
            raise DataError(
                f"{root} has two folders for the '{split}' split ({result[split]} and "
                f"{folder}). Keep one, or merge them."
            )
        result[split] = folder
    for name in names:
        if name in mapped or (str(root), name) in _told:
            continue
        _told.add((str(root), name))  # said once, however often the folder is listed
        if holds_images(name):
            _log.warning("%s: ignoring the folder %r: the data is split into %s folders, and "
                         "%r is none of them. Move its images into a split folder to use them.",
                         root, name, "/".join(result.values()), name)
        else:
            _log.info("%s: ignoring the folder %r (no images)", root, name)
    return result


def _scan_remote(uri: str) -> ImageDataset:
    """The class-folder layouts (plain or pre-split) below a URI, from one recursive listing."""
    root = uri.rstrip("/")
    if not root.split("://", 1)[1]:
        raise DataError(f"{uri} names no bucket or folder. Give s3://BUCKET/FOLDER.")
    if root.lower().endswith((".csv", ".npz")):
        raise DataError(f"{uri}: CSV and .npz datasets are read from local disk only; on remote "
                        f"storage give a folder of class folders (s3://BUCKET/DATA/<class>/...).")
    files = [f for f in storage.list_files(root) if _visible(f.relpath)]
    models = {f.relpath.rpartition("/")[0] for f in files
              if f.relpath.rpartition("/")[2] == MODEL_MARKER}
    top = {f.relpath.split("/", 1)[0] for f in files if f.relpath.count("/") >= 1} - models
    depth_of: dict[str, set[int]] = {}  # top folder -> its images' depths (1: directly in it)
    for f in files:
        if "/" in f.relpath and is_image_file(f.relpath):
            depth_of.setdefault(f.relpath.split("/", 1)[0], set()).add(
                min(f.relpath.count("/"), 2))
    # images in train/ itself, none in folders below: a class named train (as _splits_of says)
    classed = any(depth_of.get(n) == {1} for n in top
                  if _SPLIT_ALIASES.get(n.lower()) == "train")
    splits = None if classed else _split_folders(root, top, depth_of.__contains__)
    depth = 2 if splits else 1  # the class folder's level: split/class/... or class/...
    split_of = {folder: split for split, folder in (splits or {}).items()}
    samples = []
    for file in files:
        parts = file.relpath.split("/")
        if len(parts) <= depth or not is_image_file(parts[-1]):
            continue
        if "/".join(parts[:depth]) in models or (splits and parts[0] not in split_of):
            continue
        samples.append(Sample(path=storage.join(root, file.relpath), relpath=file.relpath,
                              label=parts[depth - 1], split=split_of.get(parts[0], ""),
                              stamp=(file.size, file.mtime_ns)))
    return _finish_scan(root, samples, "presplit" if splits else "folders",
                        "folders" if splits else "",
                        loose=any(is_image_file(f.relpath) and "/" not in f.relpath
                                  for f in files))


def _read_csv(csv_path: Path) -> ImageDataset:
    root = csv_path.parent
    samples = []
    with open(csv_path, newline="", encoding="utf-8-sig") as handle:
        rows = list(csv.reader(handle))
    if rows and [c.strip().lower() for c in rows[0][:2]] == ["path", "label"]:
        header, rows = rows[0], rows[1:]
    else:
        header = None
    has_split = header is not None and len(header) > 2 and header[2].strip().lower() == "split"
    for line_no, row in enumerate(rows, start=2 if header else 1):
        if not row or all(not c.strip() for c in row):
            continue
        if len(row) < 2:
            raise DataError(
                f"{csv_path}, line {line_no}: expected 'path,label' (and optionally split), "
                f"got {row!r}."
            )
        rel, label = row[0].strip(), row[1].strip()
        file = (root / rel) if not os.path.isabs(rel) else Path(rel)
        split = ""
        if has_split and len(row) > 2 and row[2].strip():
            split = _SPLIT_ALIASES.get(row[2].strip().lower(), "")
            if not split:
                raise DataError(
                    f"{csv_path}, line {line_no}: unknown split {row[2]!r}; "
                    f"expected one of train, val, test."
                )
        if not file.is_file():
            raise DataError(f"{csv_path}, line {line_no}: {file} does not exist.")
        samples.append(Sample(path=os.fspath(file), relpath=rel.replace(os.sep, "/"), label=label,
                              split=split))
    if not samples:
        raise DataError(f"{csv_path} lists no images. Expected rows of 'path,label'.")
    given = {s.split for s in samples}
    if given != {""} and "" in given:
        raise DataError(f"{csv_path}: give a split for every row, or for none.")
    classes = sorted({s.label for s in samples})
    _check_class_names(csv_path, classes)
    return ImageDataset(
        root=root, samples=samples, classes=classes, layout="csv",
        split_source="folders" if given != {""} else "",
    )


def scan_dataset(path: str | os.PathLike, *, cache_dir: str | os.PathLike | None = None,
                 progress: bool = True) -> ImageDataset:
    """Find the labeled images at ``path``.

    Layouts: ``DATA/<class>/<image>`` (nested folders below a class count for that class);
    pre-split ``DATA/{train,val|validation,test}/<class>/<image>``; a ``.csv`` of
    ``path,label[,split]`` with paths relative to the CSV file; or arrays: a ``.npz`` (``x``,
    ``y``, optional ``class_names`` and ``split``) or CIFAR-10's binary batches folder, written
    once as PNG files into the cache (``cache_dir``; see :mod:`graft.data.arrays`).

    Raises:
        DataError: When the path is missing or holds no class folders with images.
    """
    if storage.is_uri(path):
        return _scan_remote(str(path))
    path = _local_source(path, cache_dir=cache_dir, progress=progress)
    if path.is_file():
        return _read_csv(path)
    root = path.resolve()
    splits = _splits_of(root)
    samples = list(_walk_layout(root, splits))  # the streamed listing, held
    layout, split_source = ("presplit", "folders") if splits else ("folders", "")
    loose = not samples and any(is_image_file(p) for p in root.iterdir())
    return _finish_scan(root, samples, layout, split_source, loose=loose)


def _local_source(path: str | os.PathLike, *, cache_dir: str | os.PathLike | None,
                  progress: bool) -> Path:
    """The folder (or CSV file, resolved) a local dataset is read from: arrays (``.npz``,
    CIFAR-10's batches) written once as PNG files into the cache first."""
    from graft.data import arrays

    path = Path(path).expanduser()
    if not path.exists():
        raise DataError(f"{path} does not exist. Give a folder of class folders, or a CSV file.")
    if path.suffix.lower() == ".npz" and path.is_file():
        return arrays.array_folder(arrays.load_npz(path), cache_dir=cache_dir,
                                   progress=progress)
    if arrays.is_cifar10_binary(path):
        return arrays.array_folder(arrays.read_cifar10_binary(path), cache_dir=cache_dir,
                                   progress=progress)
    if path.is_file():
        if path.suffix.lower() == ".csv":
            return path.resolve()
        raise DataError(
            f"{path} is a file; expected a folder 'DATA/<class>/<image>', a pre-split folder "
            f"'DATA/train/<class>/...', a CSV of path,label, or a .npz of x and y arrays."
        )
    return path


def _sorted_files(folder: str, prefix: str) -> Iterator[tuple[str, str]]:
    """``(path, relpath)`` of the image files below ``folder``, in the order of their relative
    paths as strings (a folder sorts as its name and ``/``: everything below it shares that
    prefix). Holds one folder's names at a time."""
    names = []
    with os.scandir(folder) as entries:
        for entry in entries:
            if entry.name.startswith("."):
                continue
            if entry.is_dir(follow_symlinks=True):
                names.append(entry.name + "/")
            elif is_image_file(entry.name):
                names.append(entry.name)
    names.sort()
    for name in names:
        if name.endswith("/"):
            yield from _sorted_files(os.path.join(folder, name[:-1]), prefix + name)
        else:
            yield os.path.join(folder, name), prefix + name


def _walk_layout(root: Path, splits: dict[str, str] | None) -> Iterator[Sample]:
    """The samples of a (pre-split) class-folder layout, in :func:`scan_dataset`'s order."""
    bases = ([(split, folder + "/") for split, folder in splits.items()] if splits
             else [("", "")])
    for split, folder in sorted(bases, key=lambda b: b[1]):
        base = root / folder if folder else root
        for class_dir in sorted(_class_dirs(base), key=lambda p: p.name + "/"):
            for path, rel in _sorted_files(os.fspath(class_dir), f"{folder}{class_dir.name}/"):
                yield Sample(path=path, relpath=rel, label=class_dir.name, split=split)


@dataclass
class DatasetStream:
    """A dataset read as it is iterated, each image with its split: what is held is a few numbers
    per class (and one folder's file names while it is read), not the images, whatever their
    number. Made by :func:`stream_dataset`; iterating it again lists the folders again.

    Attributes are :class:`ImageDataset`'s; ``size`` is the number of images, ``streamed`` False
    when the listing is held in memory after all (a CSV, remote storage).
    """

    root: Path | str
    classes: list[str]
    layout: str
    split_source: str
    split_params: dict
    size: int
    streamed: bool
    _source: Callable[[], Iterator[Sample]] = field(repr=False)
    _rule: SplitRule | None = field(default=None, repr=False)
    split_sizes: dict[str, int] | None = None  # images per split, when the first look knew

    def __len__(self) -> int:
        return self.size

    def __iter__(self) -> Iterator[Sample]:
        rule = self._rule
        known = frozenset(self.classes)
        for sample in self._source():
            if sample.label not in known:
                continue  # a class folder made after the first look: not in this dataset
            if rule is not None:  # (the constructor: twice as fast as dataclasses.replace)
                sample = Sample(sample.path, sample.relpath, sample.label,
                                rule.split(sample.relpath, sample.label, sample.split),
                                sample.view, sample.stamp)
            yield sample

    def spread(self, split: str, limit: int) -> list[str]:
        """Up to ``limit`` paths of ``split``, spread evenly over it in listing order (every
        class represented), the same ones every run: one pass (two when the first look did not
        count the split), nothing else held."""
        count = self._size_of(split)
        wanted = set(spread_indices(count, limit))  # distinct, in order
        chosen, seen = [], 0
        for sample in self:
            if sample.split == split:
                if seen in wanted:
                    chosen.append(sample.path)
                seen += 1
        return chosen

    def _size_of(self, split: str) -> int:
        """Images of ``split``: counted by the first look, or by one more listing."""
        if self.split_sizes is not None:
            return self.split_sizes.get(split, 0)
        return sum(1 for sample in self if sample.split == split)

    def only(self, split: str) -> DatasetStream:
        """The images of one split, as a stream (counted by the first look, or by one more
        listing when it could not)."""
        size = self._size_of(split)
        return replace(
            self, size=size, _rule=None, split_sizes={split: size} if size else {},
            _source=lambda: (sample for sample in self if sample.split == split))

    @classmethod
    def of(cls, dataset: ImageDataset) -> DatasetStream:
        """A dataset already listed, as a stream (its samples held, as they are)."""
        return cls(root=dataset.root, classes=list(dataset.classes), layout=dataset.layout,
                   split_source=dataset.split_source, split_params=dict(dataset.split_params),
                   size=len(dataset.samples), streamed=False,
                   split_sizes=dict(Counter(s.split for s in dataset.samples)),
                   _source=lambda: iter(dataset.samples))


def spread_indices(count: int, limit: int) -> list[int]:
    """``limit`` indices spread evenly over ``range(count)`` (all of them when that is fewer)."""
    if count <= limit:
        return list(range(count))
    return [int(i) for i in np.linspace(0, count - 1, limit).round()]


def stream_dataset(path: str | os.PathLike, *, test_size: float = 0.2, val_size: float = 0.0,
                   seed: int = 0, group_regex: str | None = None,
                   cache_dir: str | os.PathLike | None = None,
                   progress: bool = True, assign: bool = True) -> DatasetStream:
    """:func:`assign_splits` of :func:`scan_dataset`, as a :class:`DatasetStream`: the same
    samples, splits and order, but a local folder of class folders (plain or pre-split) is
    listed as it is read, one folder at a time, so memory does not grow with the number of
    images. A CSV file and remote storage are listed whole, as :func:`scan_dataset` does.
    ``assign=False``: :func:`scan_dataset` itself (only the splits the data gives, none drawn).
    """
    folder = local_folder(path, cache_dir=cache_dir, progress=progress)
    if folder is not None:
        return _stream_folder(folder, assign=assign, test_size=test_size, val_size=val_size,
                              seed=seed, group_regex=group_regex)
    dataset = scan_dataset(path, cache_dir=cache_dir, progress=progress)
    if assign:
        dataset = assign_splits(dataset, test_size=test_size, val_size=val_size, seed=seed,
                                group_regex=group_regex)
    return DatasetStream.of(dataset)


def local_folder(path: str | os.PathLike, *, cache_dir: str | os.PathLike | None = None,
                 progress: bool = True) -> Path | None:
    """The local folder ``path`` is read from (arrays written into the cache first), resolved;
    None for a CSV file or remote storage, which are listed whole."""
    if storage.is_uri(path):
        return None
    folder = _local_source(path, cache_dir=cache_dir, progress=progress)
    return folder.resolve() if folder.is_dir() else None


def folder_layout(folder: Path) -> str:
    """``presplit`` when ``folder`` holds split folders (``train/<class>/...``), else
    ``folders``: from its sub-folders' names, without listing the images."""
    return "presplit" if _splits_of(folder) else "folders"


def _splits_of(root: Path) -> dict[str, str] | None:
    folders = {p.name: p for p in _class_dirs(root)}
    train = [p for name, p in folders.items() if _SPLIT_ALIASES.get(name.lower()) == "train"]
    if any(_holds_images(p, direct=True) and not any(map(_holds_images, _class_dirs(p)))
           for p in train):
        return None  # images in train/ itself, none in folders below: a class named train
    return _split_folders(root, folders, lambda name: _holds_images(folders[name]))


def _holds_images(folder: Path, *, direct: bool = False) -> bool:
    """Whether ``folder`` holds an image file (directly in it, or anywhere below)."""
    if direct:
        return any(is_image_file(p.name) and p.is_file() for p in folder.iterdir())
    return next(_sorted_files(os.fspath(folder), ""), None) is not None


def _stream_folder(root: Path, *, assign: bool, **split_options: Any) -> DatasetStream:
    splits = _splits_of(root)
    rule = SplitRule(presplit=bool(splits), **split_options) if assign else None
    try:
        if rule is not None:
            rule._check()
        wrong = None
    except ConfigError as error:  # said after the listing's own errors, as assign_splits does
        wrong = error
    labels: set[str] = set()
    given: Counter = Counter()  # the data's own splits
    size = 0
    for size, sample in enumerate(_walk_layout(root, splits), start=1):  # the one look
        if wrong is None and rule is not None:
            rule.observe(size - 1, sample.relpath, sample.label, sample.split)
        labels.add(sample.label)
        given[sample.split] += 1
    classes = sorted(labels)
    _check_found(root, size, classes,
                 loose=not size and any(is_image_file(p) for p in root.iterdir()))
    if wrong is not None:
        raise wrong
    if rule is not None:
        rule.close()
    return DatasetStream(
        root=root, classes=classes, layout="presplit" if splits else "folders",
        split_source="folders" if splits else ("hash" if rule is not None else ""),
        split_params=rule.params() if rule is not None and not splits else {}, size=size,
        streamed=True, split_sizes=rule.sizes() if rule is not None else dict(given),
        _source=lambda: _walk_layout(root, splits), _rule=rule)


def _finish_scan(root: Path | str, samples: list[Sample], layout: str, split_source: str, *,
                 loose: bool) -> ImageDataset:
    samples.sort(key=lambda s: s.relpath)
    classes = sorted({s.label for s in samples})
    _check_found(root, len(samples), classes, loose=loose)
    return ImageDataset(
        root=root, samples=samples, classes=classes, layout=layout, split_source=split_source
    )


def _check_found(root: Path | str, count: int, classes: list[str], *, loose: bool) -> None:
    """Refuse a listing without images, or with one class (``loose``: images lie directly in
    the root, the likely mistake)."""
    if not count:
        hint = (
            " The images lie directly in it: put each class in its own sub-folder."
            if loose else ""
        )
        raise DataError(
            f"No images found in class folders under {root}. Expected DATA/<class>/<image> "
            f"(JPEG, PNG, GIF, BMP, WebP or TIFF).{hint}"
        )
    if len(classes) < 2:
        raise DataError(
            f"{root} has one class ({classes[0]!r}); a classifier needs at least two class folders."
        )
    _check_class_names(root, classes)


def _check_class_names(root: Path | str, classes: Sequence[str]) -> None:
    """Refuse classes that are split names (``train`` and ``test``: a split folder read as a
    class); warn about one (a real class may be called ``train``)."""
    named = [c for c in classes if c.lower() in _SPLIT_ALIASES]
    if len(named) > 1:
        raise DataError(
            f"{root}: the classes {named} are split names, so this would train a model telling "
            f"the splits apart. Pre-split data is read as DATA/train/<class>/<image> (and "
            f"test/, val/ likewise); otherwise rename those class folders."
        )
    if named:
        _log.warning("%s: the class %r is named like a split folder; pre-split data is read "
                     "as DATA/train/<class>/<image>.", root, named[0])


def split_fraction(relpath: str, seed: int = 0, group_regex: str | None = None) -> float:
    """A number in [0, 1) that depends only on the image's group key and the seed.

    The key is the relative path with the part of the file name after ``_nohash_`` removed
    (TF retrain.py's convention for near-duplicates), or the first group (else the whole match) of
    ``group_regex`` searched in the relative path. Images with the same key always land together.
    """
    key = relpath
    if group_regex:
        match = re.search(group_regex, relpath)
        if match:
            key = match.group(1) if match.groups() else match.group(0)
    else:
        head, _, name = relpath.rpartition("/")
        stem, _ = os.path.splitext(name)
        stripped = _NOHASH.sub("", stem)
        key = f"{head}/{stripped}" if stripped != stem else relpath
    digest = hashlib.sha1(f"{seed}:{key}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64


class SplitRule:
    """The split of each image (see :func:`assign_splits`), decided one image at a time after
    one look at every image (:meth:`observe`, then :meth:`close`): what that look keeps is a few
    numbers per class, not the images, so a listing can be split as it streams.

    ``presplit``: the data gives its own splits (pre-split folders, a CSV split column), which are
    kept, a ``val`` folder becoming the test when there is no ``test`` one.
    """

    def __init__(self, *, presplit: bool, test_size: float = 0.2, val_size: float = 0.0,
                 seed: int = 0, group_regex: str | None = None) -> None:
        self.presplit = presplit
        self.test_size, self.val_size, self.seed = test_size, val_size, seed
        self.group_regex = group_regex
        self._given: set[str] = set()  # the splits the data gives
        # hash splits, per class: [images, any drawn train, (highest fraction, index, relpath)]
        self._classes: dict[str, list] = {}
        self._to_train: set[tuple[str, str]] = set()  # (relpath, label) moved to train
        self._counts: Counter = Counter()  # drawn splits; given ones ("train>val": drawn val)
        self._closed = False

    def _check(self) -> None:
        test_size, val_size, group_regex = self.test_size, self.val_size, self.group_regex
        for name, value in (("test_size", test_size), ("val_size", val_size)):
            if not 0.0 <= float(value) < 1.0:
                raise ConfigError(f"{name} must be in [0, 1). Got {value!r} instead.",
                                  parameter=name)
        if test_size + val_size >= 1.0:
            raise ConfigError(
                f"test_size + val_size must be below 1 to leave training data. "
                f"Got {test_size} + {val_size}.", parameter=("test_size", "val_size")
            )
        if group_regex:
            try:
                re.compile(group_regex)
            except re.error as exc:
                raise ConfigError(f"group_regex {group_regex!r} is not a valid regex: "
                                  f"{exc}", parameter="group_regex") from exc

    def _fraction(self, relpath: str) -> float:
        return split_fraction(relpath, seed=self.seed, group_regex=self.group_regex)

    def _draw(self, fraction: float) -> str:
        if fraction < self.test_size:
            return "test"
        return "val" if fraction < self.test_size + self.val_size else "train"

    def observe(self, index: int, relpath: str, label: str, given: str = "") -> None:
        """Look at image ``index`` (indices count 0, 1, 2, ... in one fixed order)."""
        if self.presplit:
            self._given.add(given)
            self._counts[given] += 1
            if given == "train" and self.val_size > 0 and self._fraction(relpath) < self.val_size:
                self._counts["train>val"] += 1
            return
        fraction = self._fraction(relpath)
        self._counts[self._draw(fraction)] += 1
        state = self._classes.setdefault(label, [0, False, (-1.0, -1, "")])
        state[0] += 1
        state[1] = state[1] or self._draw(fraction) == "train"
        state[2] = max(state[2], (fraction, index, relpath))

    def close(self) -> SplitRule:
        """Every image has been observed: check the options, decide the exceptions (each named
        by its path, so a later listing that gained or lost files splits the rest the same)."""
        self._check()
        if self.presplit and "train" not in self._given:
            raise DataError("The given splits hold no 'train' images.")
        for label, (count, any_train, (_, _, relpath)) in self._classes.items():
            if count >= 2 and not any_train:
                self._to_train.add((relpath, label))  # so that each class can be learned
        self._classes.clear()
        self._closed = True
        return self

    def split(self, relpath: str, label: str, given: str = "") -> str:
        """The split of an image (the images observed before it was closed decide it)."""
        if not self._closed:
            raise RuntimeError("SplitRule.split before close()")
        if self.presplit:
            if "test" not in self._given and given == "val":
                given = "test"  # train/val only (hymenoptera): the held-out folder is the test
            gives_val = "val" in self._given and "test" in self._given
            if (given == "train" and self.val_size > 0 and not gives_val
                    and self._fraction(relpath) < self.val_size):
                return "val"  # a validation split wanted, not given: a stable share of train
            return given
        if (relpath, label) in self._to_train:
            return "train"
        return self._draw(self._fraction(relpath))

    def sizes(self) -> dict[str, int]:
        """Images per split, as :meth:`split` will give them (known once closed)."""
        if not self._closed:
            raise RuntimeError("SplitRule.sizes before close()")
        sizes: Counter = Counter()
        if self.presplit:
            for given, count in self._counts.items():
                if given != "train>val":
                    moved = given == "val" and "test" not in self._given
                    sizes["test" if moved else given] += count
            if not ("val" in self._given and "test" in self._given):
                sizes["train"] -= self._counts["train>val"]
                sizes["val"] += self._counts["train>val"]
        else:
            sizes.update(self._counts)
            for relpath, _ in self._to_train:
                sizes[self._draw(self._fraction(relpath))] -= 1
                sizes["train"] += 1
        return {split: count for split, count in sizes.items() if count}

    def params(self) -> dict:
        return {"test_size": self.test_size, "val_size": self.val_size, "seed": self.seed,
                "group_regex": self.group_regex}


def compute_splits(
    relpaths: list[str],
    labels: list[str],
    *,
    given: list[str] | None = None,
    test_size: float = 0.2,
    val_size: float = 0.0,
    seed: int = 0,
    group_regex: str | None = None,
) -> list[str]:
    """The split (``train``/``val``/``test``) of each image; see :func:`assign_splits`."""
    rule = SplitRule(presplit=given is not None, test_size=test_size, val_size=val_size,
                     seed=seed, group_regex=group_regex)
    rule._check()  # before reading any image
    rows = list(zip(relpaths, labels, given if given is not None else [""] * len(relpaths)))
    for index, (relpath, label, split) in enumerate(rows):
        rule.observe(index, relpath, label, split)
    rule.close()
    return [rule.split(*row) for row in rows]


def assign_splits(
    dataset: ImageDataset,
    test_size: float = 0.2,
    val_size: float = 0.0,
    seed: int = 0,
    group_regex: str | None = None,
) -> ImageDataset:
    """Give every sample a split, deterministically and stably.

    Data with its own splits (pre-split folders, a CSV split column) keeps them; with only
    train/val folders, the val folder is the held-out test. Otherwise an image goes to ``test``
    when its :func:`split_fraction` is below ``test_size``, to ``val`` below
    ``test_size + val_size``, else to ``train``, separately for each class (so each class is split
    in the same proportions, in expectation). Adding images never moves an old image to another
    split. A class whose every image drew ``test``/``val`` gives its highest-drawn image to
    ``train``, so each class can be learned.
    """
    given = [s.split for s in dataset.samples] if dataset.split_source == "folders" else None
    splits = compute_splits(
        [s.relpath for s in dataset.samples], [s.label for s in dataset.samples], given=given,
        test_size=test_size, val_size=val_size, seed=seed, group_regex=group_regex,
    )
    samples = [replace(s, split=split) for s, split in zip(dataset.samples, splits)]
    if given is not None:
        return replace(dataset, samples=samples)
    return replace(
        dataset,
        samples=samples,
        split_source="hash",
        split_params={"test_size": test_size, "val_size": val_size, "seed": seed,
                      "group_regex": group_regex},
    )


def check_output_dir(out: str | os.PathLike, data: str | os.PathLike) -> None:
    """Refuse an output directory inside the dataset (it would become a class on the next run),
    or on remote storage (graft writes models and feature files to local disk)."""
    storage.check_local(out, "the model")
    if storage.is_uri(data):
        return  # remote data: a local output folder is never inside it
    out_path = Path(out).expanduser().resolve()
    data_path = Path(data).expanduser().resolve()
    root = data_path.parent if data_path.is_file() else data_path
    if data_path.suffix.lower() in (".h5", ".hdf5", ".npz"):
        return  # a feature or array file: nothing is scanned next to it
    if out_path == root or root in out_path.parents:
        beside = os.fspath(root.parent / (root.name + "-model"))
        raise ConfigError(
            f"out={os.fspath(out)!r} is inside the dataset {data}: the model's files would be read "
            f"as images of a class on the next run. Write the model outside it, e.g. "
            f"out={beside!r}.", parameter="out"
        )
