"""``graft data fetch``: the datasets of the transfer-learning tutorials, in the layout graft
trains on, in one command.

Each dataset lists its files with their public URLs and pinned SHA-256, as published in
TensorFlow Datasets' checksum files (flower_photos, oxford_flowers102, caltech101, cifar10), the
PyTorch tutorials' download script (hymenoptera) and Coral's flowers-17 script. No checksum of
cats_and_dogs_filtered.zip is published: it is fetched unverified, its SHA-256 printed to pin with
``sha256`` next time. A file is downloaded into the cache (streamed, resumable,
checked before use: :mod:`graft.data.download`), taken from ``from_files`` (an archive
downloaded by hand), or fetched from a ``mirror`` with the same file names; the checksum
applies in every case unless ``sha256`` overrides it. Archives are unpacked safely
(:mod:`graft.data.archives`) and arranged into ``DIR/<name>/...`` through a temporary folder
renamed into place at the end, so an interrupted or failed fetch leaves no half-made dataset.
"""

from __future__ import annotations

import contextlib
import difflib
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np

from graft.config import resolve_cache_dir
from graft.data.archives import unpack
from graft.data.download import DownloadError, download, sha256_of, verify
from graft.errors import ConfigError, DataError, Note

__all__ = ["DATASETS", "MIRROR_ENV", "DatasetInfo", "RemoteFile", "fetch_dataset",
           "list_datasets"]

MIRROR_ENV = "GRAFT_DATA_MIRROR"
CALTECH_SPLITS = ("30-per-class",)


@dataclass(frozen=True)
class RemoteFile:
    """One file of a dataset: where it is published and what it must hash to."""

    url: str
    sha256: str | None  # None: no published checksum was found to pin (said when fetching)
    size: int  # bytes; 0 when not published

    @property
    def name(self) -> str:
        return os.path.basename(urlsplit(self.url).path)


@dataclass(frozen=True)
class DatasetInfo:
    """A dataset graft can fetch, and how its files become an image folder."""

    name: str
    files: tuple[RemoteFile, ...]
    classes: int
    images: int
    layout: str  # what DIR/<name> holds, in words
    licence: str
    citation: str
    arrange: Callable[[dict[str, Path], Path, FetchOptions], None] = field(repr=False)

    @property
    def size(self) -> int:
        return sum(f.size for f in self.files)


@dataclass(frozen=True)
class FetchOptions:
    split: str | None = None
    seed: int = 0
    work: Path | None = None  # where archives are unpacked (the staging folder beside DIR)


# -- arranging unpacked archives ---------------------------------------------------------------
def _top_folder(unpacked: Path, name: str) -> Path:
    folder = unpacked / name
    if not folder.is_dir():
        found = sorted(p.name for p in unpacked.iterdir())
        raise DataError(f"The archive has no {name}/ folder (it holds {found[:5]}): not the "
                        f"expected file.")
    return folder


@contextlib.contextmanager
def _unpacked(archive: Path, options: FetchOptions) -> Iterator[Path]:
    """The archive unpacked into the staging folder; what is left of it goes afterwards."""
    folder = unpack(archive, into=options.work)
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _move_into(source: Path, folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    shutil.move(str(source), folder / source.name)


def _move_folder(top: str) -> Callable[[dict[str, Path], Path, FetchOptions], None]:
    """The archive's ``top/`` folder is the dataset, as is."""

    def arrange(files: dict[str, Path], out: Path, options: FetchOptions) -> None:
        (archive,) = files.values()
        with _unpacked(archive, options) as unpacked:
            shutil.move(str(_top_folder(unpacked, top)), out)

    return arrange


# Oxford 17 flowers: image_0001.jpg..image_1360.jpg, 80 per class, in this order (the VGG page).
FLOWERS17_CLASSES = ("daffodil", "snowdrop", "lily_valley", "bluebell", "crocus", "iris",
                     "tigerlily", "tulip", "fritillary", "sunflower", "daisy", "colts_foot",
                     "dandelion", "cowslip", "buttercup", "windflower", "pansy")


def _flowers17(files: dict[str, Path], out: Path, options: FetchOptions) -> None:
    with _unpacked(files["17flowers.tgz"], options) as unpacked:
        images = sorted(_top_folder(unpacked, "jpg").glob("image_*.jpg"))
        if len(images) != 80 * len(FLOWERS17_CLASSES):
            raise DataError(f"17flowers.tgz holds {len(images)} images, not 1,360.")
        for image in images:
            number = int(image.stem.split("_")[1])
            _move_into(image, out / FLOWERS17_CLASSES[(number - 1) // 80])


def _load_mat(path: Path, keys: Sequence[str]) -> dict[str, np.ndarray]:
    from graft.extras import require

    require("train", "scipy", command="graft data fetch oxford_flowers102 (reading .mat files)")
    from scipy.io import loadmat

    data = loadmat(path)
    missing = [k for k in keys if k not in data]
    if missing:
        raise DataError(f"{path.name} has no {missing} (it has {sorted(data)}): not the "
                        f"expected file.")
    return {k: np.asarray(data[k]).ravel().astype(np.int64) for k in keys}


def _flowers102(files: dict[str, Path], out: Path, options: FetchOptions) -> None:
    labels = _load_mat(files["imagelabels.mat"], ["labels"])["labels"]
    split_ids = _load_mat(files["setid.mat"], ["trnid", "valid", "tstid"])
    with _unpacked(files["102flowers.tgz"], options) as unpacked:
        jpg = _top_folder(unpacked, "jpg")
        for split, key in (("train", "trnid"), ("val", "valid"), ("test", "tstid")):
            for image_id in split_ids[key]:
                label = int(labels[image_id - 1])  # 1-based, as in the .mat files
                source = jpg / f"image_{image_id:05d}.jpg"
                if not source.is_file():
                    raise DataError(f"102flowers.tgz has no {source.name}, which setid.mat "
                                    f"lists: the files do not belong together.")
                _move_into(source, out / split / f"{label:03d}")


def _caltech101(files: dict[str, Path], out: Path, options: FetchOptions) -> None:
    (archive,) = files.values()
    with _unpacked(archive, options) as unpacked:
        top = unpacked / "101_ObjectCategories"
        if not top.is_dir():  # data.caltech.edu's zip wraps 101_ObjectCategories.tar.gz
            inner = next(unpacked.rglob("101_ObjectCategories.tar.gz"), None)
            if inner is None:
                raise DataError(f"{archive.name} holds neither 101_ObjectCategories/ nor "
                                f"101_ObjectCategories.tar.gz: not the expected file.")
            top = _top_folder(unpack(inner), "101_ObjectCategories")  # inside `unpacked`
        rng = np.random.default_rng(options.seed)
        for folder in sorted(p for p in top.iterdir() if p.is_dir()):
            if folder.name == "BACKGROUND_Google":  # clutter, not one of the 101 categories
                continue
            images = sorted(folder.glob("*.jpg"))
            if options.split == "30-per-class":
                chosen = set(rng.permutation(len(images))[:30].tolist())
                for index, image in enumerate(images):
                    _move_into(image, out / ("train" if index in chosen else "test") / folder.name)
            else:
                _move_into(folder, out)


def _cifar10(files: dict[str, Path], out: Path, options: FetchOptions) -> None:
    _move_folder("cifar-10-batches-bin")(files, out, options)


_TFDS = "TensorFlow Datasets' checksums"
DATASETS: dict[str, DatasetInfo] = {d.name: d for d in (
    DatasetInfo(
        "flower_photos",
        (RemoteFile("https://storage.googleapis.com/download.tensorflow.org/example_images/"
                    "flower_photos.tgz", "4c54ace7911aaffe13a365c34f650e71dd5bf1be0a58b464e5a7183e3e595d9c",
                    228_813_984),),
        classes=5, images=3670, layout="<class>/*.jpg",
        licence="CC-BY (per image, see LICENSE.txt)",
        citation="The TensorFlow Team, Flowers, 2019 (the TensorFlow image retraining tutorial)",
        arrange=_move_folder("flower_photos")),
    DatasetInfo(
        "cats_and_dogs_filtered",
        (RemoteFile("https://storage.googleapis.com/mledu-datasets/cats_and_dogs_filtered.zip",
                    None, 68_606_236),),
        classes=2, images=3000, layout="{train,validation}/{cats,dogs}/*.jpg",
        licence="Microsoft Research (Asirra), for research use",
        citation="Elson et al., Asirra, CCS 2007; the Keras/TF transfer-learning tutorial subset",
        arrange=_move_folder("cats_and_dogs_filtered")),
    DatasetInfo(
        "hymenoptera",
        (RemoteFile("https://download.pytorch.org/tutorial/hymenoptera_data.zip",
                    "fbc41b31d544714d18dd1230b1e2b455e1557766e13e67f9f5a7a23af7c02209",
                    47_286_322),),
        classes=2, images=398, layout="{train,val}/{ants,bees}/*.jpg",
        licence="ImageNet subset, for non-commercial research and education",
        citation="The PyTorch transfer-learning tutorial (ImageNet images)",
        arrange=_move_folder("hymenoptera_data")),
    DatasetInfo(
        "oxford_flowers17",
        (RemoteFile("https://www.robots.ox.ac.uk/~vgg/data/flowers/17/17flowers.tgz",
                    "fe38a60f8b4a95e657551247d3e7d799a3fafcdbc595be504b12839967823d70",
                    0),),
        classes=17, images=1360, layout="<class>/*.jpg (80 per class)",
        licence="Visual Geometry Group, Oxford, for research use",
        citation="Nilsback and Zisserman, A Visual Vocabulary for Flower Classification, "
                 "CVPR 2006",
        arrange=_flowers17),
    DatasetInfo(
        "oxford_flowers102",
        (RemoteFile("https://www.robots.ox.ac.uk/~vgg/data/flowers/102/102flowers.tgz",
                    "2d01ecc807db462958cfe3d92f57a8c252b4abd240eb955770201e45f783b246",
                    344_862_509),
         RemoteFile("https://www.robots.ox.ac.uk/~vgg/data/flowers/102/imagelabels.mat",
                    "4903e94206bac23bf772aadf06451916df56b58fc483a62db32a97b82656651d",
                    502),
         RemoteFile("https://www.robots.ox.ac.uk/~vgg/data/flowers/102/setid.mat",
                    "46b8678f91fd95d3c8f4feab80d271a6c834a1dd896fe29fd3e6ad9ce5c8dccd",
                    14_989)),
        classes=102, images=8189,
        layout="{train,val,test}/<class 001-102>/*.jpg (the official setid.mat split)",
        licence="Visual Geometry Group, Oxford, for research use",
        citation="Nilsback and Zisserman, Automated Flower Classification over a Large Number "
                 "of Classes, ICVGIP 2008",
        arrange=_flowers102),
    DatasetInfo(
        "caltech101",
        (RemoteFile("https://data.caltech.edu/records/mzrjq-6wc02/files/caltech-101.zip",
                    "331234750fc7f77520e50d9565e8b6907b03565e30320da1401130db08c61f91",
                    137_414_764),),
        classes=101, images=8677,
        layout="<class>/*.jpg, or {train,test}/<class>/*.jpg with --split 30-per-class "
               "(BACKGROUND_Google left out)",
        licence="Caltech, for research use (CC BY 4.0 on data.caltech.edu)",
        citation="Fei-Fei, Fergus and Perona, Learning generative visual models from few "
                 "training examples, CVPR 2004 Workshop",
        arrange=_caltech101),
    DatasetInfo(
        "cifar10",
        (RemoteFile("https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz",
                    "c4a38c50a1bc5f3a1c5537f2155ab9d68f9f25eb1ed8d9ddda3db29a59bca1dd",
                    170_052_171),),
        classes=10, images=60000,
        layout="the binary batches (data_batch_1-5.bin, test_batch.bin): graft trains on "
               "the folder directly",
        licence="For research use (Krizhevsky, Nair and Hinton)",
        citation="Krizhevsky, Learning Multiple Layers of Features from Tiny Images, 2009",
        arrange=_cifar10),
)}


def list_datasets() -> list[DatasetInfo]:
    """Every dataset :func:`fetch_dataset` knows, by name."""
    return [DATASETS[name] for name in sorted(DATASETS)]


def _info(name: str) -> DatasetInfo:
    if name in DATASETS:
        return DATASETS[name]
    close = difflib.get_close_matches(name, list(DATASETS), n=1)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    raise ConfigError(f"Unknown dataset {name!r}.{hint} Known: {', '.join(sorted(DATASETS))} "
                      f"('graft data fetch --list' describes them).")


def _local_files(info: DatasetInfo, given: Sequence[str | os.PathLike]) -> dict[str, Path]:
    """``from_files`` matched to the dataset's files by name (any name for a one-file set)."""
    paths = [Path(p).expanduser() for p in given]
    for path in paths:
        if not path.is_file():
            raise DataError(f"from_files={os.fspath(path)!r}: no such file.",
                            parameter="from_files")
    if len(info.files) == 1 and len(paths) == 1:
        return {info.files[0].name: paths[0]}
    by_name = {p.name: p for p in paths}
    unknown = sorted(set(by_name) - {f.name for f in info.files})
    if unknown:
        raise DataError(f"from_files={unknown[0]!r}: {info.name} has no file of that name; its "
                        f"files are {', '.join(f.name for f in info.files)}.",
                        parameter="from_files")
    return by_name


def fetch_dataset(name: str, to: str | os.PathLike, *,
                  from_files: Sequence[str | os.PathLike] = (), mirror: str | None = None,
                  sha256: str | Sequence[str] | None = None, split: str | None = None,
                  seed: int = 0,
                  cache_dir: str | os.PathLike | None = None, progress: bool = True,
                  log: Callable[[str], None] = lambda message: None) -> Path:
    """Fetch dataset ``name`` into ``to/<name>`` and return that folder.

    Args:
        from_files: Files downloaded by hand (matched by file name), used instead of the URLs.
        mirror: A base URL serving the same file names (default ``$GRAFT_DATA_MIRROR``).
        sha256: Checksums to require instead of the pinned ones: ``HEX`` (one-file datasets)
            or ``FILENAME=HEX``, one or several.
        split: ``30-per-class`` for caltech101.

    Raises:
        ConfigError: For an unknown dataset or option.
        DownloadError, ChecksumError, UnsafeArchiveError (all ``DataError``): when a file cannot
            be fetched, is not the pinned one, or its archive is unsafe; nothing is left in ``to``.
    """
    info = _info(name)
    if split is not None and not (name == "caltech101" and split in CALTECH_SPLITS):
        raise ConfigError(f"split {split!r} does not apply to {name}"
                          + (f" (caltech101 takes {', '.join(CALTECH_SPLITS)})."
                             if name == "caltech101" else "."), parameter="split")
    overrides = _checksum_overrides(info, sha256)
    if mirror is not None or os.environ.get(MIRROR_ENV):
        _check_mirror(mirror or os.environ[MIRROR_ENV])
    target = Path(to).expanduser() / info.name
    if target.exists() and not target.is_dir():
        raise DataError(f"{target} is a file; graft data fetch makes a folder there. Move it, or "
                        f"choose another to.", parameter="to")
    if target.exists() and any(target.iterdir()):
        log(f"{target} is there already: nothing to fetch (delete it to fetch again).")
        return target
    files = _gather(info, _local_files(info, from_files), overrides, to,
                    mirror=mirror or os.environ.get(MIRROR_ENV) or None,
                    downloads=resolve_cache_dir(cache_dir) / "downloads" / info.name,
                    progress=progress, log=log)
    _unpack(info, files, target, FetchOptions(split=split, seed=seed), log)
    return target


def _gather(info: DatasetInfo, local: dict[str, Path], overrides: dict[str, str],
            to: str | os.PathLike, *, mirror: str | None, downloads: Path, progress: bool,
            log: Callable[[str], None]) -> dict[str, Path]:
    """Each file of the dataset: given by hand (checked), else downloaded (checked as it is)."""
    files: dict[str, Path] = {}
    for remote in info.files:
        pinned = overrides.get(remote.name, remote.sha256)
        if remote.name in local:
            files[remote.name] = local[remote.name]
            if pinned is None:
                _unpinned(files[remote.name], log)
            else:
                verify(local[remote.name], pinned, delete=False)
            continue
        url = f"{mirror.rstrip('/')}/{remote.name}" if mirror else remote.url
        log(f"Downloading {url}" + (f" ({remote.size / 1e6:,.1f} MB)" if remote.size else ""))
        # unquoted and one mention each: the CLI shows a flag to type (--from NAME)
        hint = (f" Offline? Download {remote.url} by hand and pass it as from_files="
                f"{remote.name} (or set mirror to a base URL serving the same files).")
        try:
            files[remote.name] = download(url, downloads / remote.name, sha256=pinned,
                                          size=remote.size or None, progress=progress, hint=hint)
        except DownloadError as error:
            error.parameters += ("from_files", "mirror")  # the hint's
            raise
        if pinned is None:
            _unpinned(files[remote.name], log)
    return files


def _unpack(info: DatasetInfo, files: dict[str, Path], target: Path, options: FetchOptions,
            log: Callable[[str], None]) -> None:
    """Arrange the files into a staging folder beside ``target``, then move it into place."""
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".graft-fetch-{info.name}-", dir=target.parent))
    try:
        log(f"Unpacking into {target}")
        info.arrange(files, staging / info.name, replace(options, work=staging))
        if target.exists():
            target.rmdir()  # empty (checked above)
        os.replace(staging / info.name, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _checksum_overrides(info: DatasetInfo, given: str | Sequence[str] | None) -> dict[str, str]:
    """``sha256`` values by file name."""
    overrides: dict[str, str] = {}
    for text in [given] if isinstance(given, str) else list(given or ()):
        name, sep, value = text.rpartition("=")
        if not sep:
            if len(info.files) != 1:
                raise ConfigError(f"{info.name} has {len(info.files)} files: give each sha256 "
                                  f"as FILENAME=HEX (files: "
                                  f"{', '.join(f.name for f in info.files)}).",
                                  parameter="sha256")
            name = info.files[0].name
        value = value.strip().lower()
        if len(value) != 64 or any(c not in "0123456789abcdef" for c in value):
            raise ConfigError(f"sha256 must be 64 hexadecimal digits. Got {value!r}.",
                              parameter="sha256")
        if name not in {f.name for f in info.files}:
            raise ConfigError(f"sha256={name}=...: {info.name} has no file of that name "
                              f"(files: {', '.join(f.name for f in info.files)}).",
                              parameter="sha256")
        overrides[name] = value
    return overrides


def _check_mirror(mirror: str) -> None:
    parts = urlsplit(mirror)
    if parts.scheme not in ("http", "https", "file") or (parts.scheme != "file" and
                                                         not parts.netloc):
        raise ConfigError(f"mirror (or ${MIRROR_ENV}) must be a base URL such as "
                          f"https://mirror.example.com/datasets. Got {mirror!r}.",
                          parameter="mirror")


def _unpinned(path: Path, log: Callable[[str], None]) -> None:
    digest = sha256_of(path)
    log(Note(f"Warning: no published SHA-256 of {path.name} is known, so it was not verified. "
             f"Its SHA-256 is {digest}: pass sha256={digest} to require the same file next "
             f"time.", parameter="sha256"))
