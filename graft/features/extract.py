"""Extracting a dataset's features: cached, incremental, resumable, with a progress bar.

Fused backbones (``vgg16+resnet50``) are extracted in one pass, each image decoded once, and
each backbone keeps its own cache: features computed for ``vgg16`` alone are reused by any
fusion that includes it, and the other way round.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import logging
import os
import time
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from graft.bundle.fusion import FUSION
from graft.config import resolve_cache_dir
from graft.data.augment import augment_for_network
from graft.data.contents import hash_bytes
from graft.data.dataset import SPLITS, DatasetStream, ImageDataset, Sample
from graft.data.images import decode_image
from graft.data.preprocess import PreprocessConfig
from graft.data.storage import join, read_bytes
from graft.errors import DataError, ImageError, Note
from graft.features.contents import ContentIndex
from graft.features.engine import FeatureEngine, fused_key
from graft.features.store import (
    CachedFeatures,
    FeatureCache,
    FeatureFileWriter,
    FeatureSet,
    cache_key,
    forget_folders,
)
from graft.inference.batches import iter_decoded_batches, use_processes
from graft.inference.images import draft_size, preprocess
from graft.system import plan_threads

__all__ = [
    "ExtractionReport",
    "extract_dataset",
    "extract_feature_set",
    "extract_to_file",
    "extract_views",
    "open_cache",
    "view_key",
]

_log = logging.getLogger("graft.features")
_GATHER_ROWS = 4096
_LOOKUP_BLOCK = 4096  # samples keyed and looked up in the cache index at once


@dataclass
class ExtractionReport:
    """What one extraction did: how many images came from the cache, were computed, or failed."""

    n_images: int = 0
    n_cached: int = 0
    n_computed: int = 0
    failures: list[tuple[str, str]] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def images_per_second(self) -> float:
        return self.n_computed / self.seconds if self.seconds > 0 else 0.0

    def summary(self) -> str:
        text = (f"{self.n_images} images: {self.n_cached} from cache, {self.n_computed} extracted"
                f" in {self.seconds:.1f}s")
        if self.n_computed:
            text += f" ({self.images_per_second:.1f} img/s)"
        if self.failures:
            text += f", {len(self.failures)} skipped"
        return text


def view_key(key: str, view: int, augment: tuple[str, ...]) -> str:
    """Cache key of an image's ``view``-th augmented view (the image's own key for view 0)."""
    if view == 0:
        return key
    return hashlib.sha1(f"{key}|view{view}|{','.join(augment)}".encode()).hexdigest()


def open_cache(engine: FeatureEngine, cache_dir: str | os.PathLike | None = None,
               shard_size: int = 512) -> FeatureCache:
    """The on-disk feature cache for ``engine``'s backbone."""
    root = resolve_cache_dir(cache_dir) / "features" / engine.key
    return FeatureCache(root, engine.num_features, shard_size=shard_size)


def extract_dataset(
    dataset: ImageDataset,
    engines: Sequence[FeatureEngine],
    caches: Sequence[FeatureCache],
    *,
    batch_size: int = 32,
    workers: int | None = None,
    progress: bool = True,
    augment: tuple[str, ...] = (),
    engine: str = "local",
    address: str | None = None,
    bar: Any = None,
    contents: ContentIndex | None = None,
    upcoming: int | None = 0,
) -> tuple[list[str | None], ExtractionReport]:
    """Make sure every image of ``dataset`` is in each backbone's cache; compute only what is missing.

    Args:
        engines, caches: One engine per (fused) backbone, and its cache, in the same order.
        augment: How samples with ``view > 0`` are augmented (see ``augment_for_network``);
            each view is cached under its own key, reproducible from the file and the view.
        engine: ``local`` (this process) or ``ray`` (decode and run the graphs on a Ray
            cluster at ``address``; only this process writes the cache).
        bar: A progress bar over every image (cached ones too) to advance and leave open.
        contents: Keeps the content hash of each image decoded here, from the bytes read.
        upcoming: Images after these (a stream's later parts), for the time estimate; None: none.

    Returns:
        The cache key of every sample (None for a file that could not be read), and a report.
        An image counts as computed if any backbone had to compute it.
    """
    if len(engines) != len(caches) or not engines:
        raise ValueError("extract_dataset needs one cache per engine, and at least one engine.")
    start = time.perf_counter()
    if bar is None:  # (one extraction over parts clears it once, at its start)
        forget_folders()  # resolved again: a symlinked folder may point elsewhere since last time
    report = ExtractionReport(n_images=len(dataset.samples))
    keys, todo = _look_up(dataset.samples, caches, augment, report)
    shared = bar is not None
    bar = bar if shared else _bar(len(todo), progress and bool(todo))
    if shared:
        bar.update(len(dataset.samples) - len(todo))  # cached, or failed before
    job = _Job(dataset.samples, list(engines), list(caches), keys, report, bar, augment,
               contents, ahead=-1 if upcoming is None else len(todo) + upcoming)
    try:
        if engine == "ray" and todo:
            _extract_on_ray(job, todo, batch_size=batch_size, address=address)
        elif todo:
            _extract_here(job, todo, batch_size=batch_size, workers=workers)
    finally:
        # Ctrl-C or an error keeps every complete batch: the next run resumes from here.
        for cache in caches:
            cache.flush()
        if contents is not None:
            contents.flush()
        if not shared:
            bar.close()
    report.failures.sort()
    report.seconds = time.perf_counter() - start
    return keys, report


_Todo = tuple[int, str, tuple[int, ...]]  # (sample index, cache key, backbones missing it)


def _bar(total: int, progress: bool) -> Any:
    return tqdm(total=total, unit="img", desc="Extracting features", disable=not progress,
                dynamic_ncols=True, smoothing=0.1)


def _look_up(samples: Sequence[Sample], caches: Sequence[FeatureCache], augment: tuple[str, ...],
             report: ExtractionReport) -> tuple[list[str | None], list[_Todo]]:
    """Each sample's cache key, and the samples some backbone has not cached (one index query
    per block of samples); images that failed before are reported again."""
    keys: list[str | None] = [None] * len(samples)
    todo: list[_Todo] = []
    for first in range(0, len(samples), _LOOKUP_BLOCK):
        block: list[tuple[int, str]] = []
        for index in range(first, min(first + _LOOKUP_BLOCK, len(samples))):
            sample = samples[index]
            try:
                block.append((index, view_key(cache_key(sample.path, sample.stamp),
                                              sample.view, augment)))
            except OSError as exc:
                report.failures.append((sample.relpath, f"cannot stat ({exc.strerror or exc})"))
        found = [cache.lookup([key for _, key in block]) for cache in caches]
        for index, key in block:
            reason = next((failed[key] for _, failed in found if key in failed), None)
            missing = tuple(j for j, (present, _) in enumerate(found) if key not in present)
            if reason is not None:
                report.failures.append((samples[index].relpath, reason))
                continue
            if missing:
                todo.append((index, key, missing))
            else:
                report.n_cached += 1
            keys[index] = key
    return keys, todo


@dataclass
class _Job:
    """One extraction's state: the samples, where their features go, and what is reported."""

    samples: Sequence[Sample]
    engines: list[FeatureEngine]
    caches: list[FeatureCache]
    keys: list[str | None]
    report: ExtractionReport
    bar: Any
    augment: tuple[str, ...]
    contents: ContentIndex | None
    ahead: int = 0  # images to compute here, and to look up after these
    hashes: dict[str, int] = field(default_factory=dict)  # key -> content hash, from decoding

    def load(self, item: _Todo, configs: Sequence[PreprocessConfig]) -> list[np.ndarray]:
        """An image for each network: read once, its bytes hashed, then decoded."""
        index, key, _ = item
        sample = self.samples[index]
        if sample.view:
            image = decode_image(sample.path, min_size=draft_size(configs))
            seed = int(key[:15], 16)  # the view's key: the same view every time
            return [augment_for_network(image, config, self.augment, np.random.default_rng(seed))
                    for config in configs]
        try:
            data = read_bytes(sample.path)
        except (OSError, ValueError) as exc:  # remote storage raises ValueError kinds too
            reason = getattr(exc, "strerror", None) or exc
            raise ImageError(sample.relpath, f"cannot read ({reason})") from exc
        if not data:  # said of a file as decode_image says it
            raise ImageError(sample.relpath, "empty file (0 bytes)", kind="empty")
        self.hashes[key] = hash_bytes(data)
        return preprocess(data, configs)

    def failed(self, index: int, key: str, reason: str) -> None:
        """An image that could not be decoded: reported, cached as failed, not used."""
        self.report.failures.append((self.samples[index].relpath, reason))
        self.hashes.pop(key, None)
        for cache in self.caches:
            cache.add_failure(key, reason)
        self.keys[index] = None

    def computed(self, items: Sequence[_Todo], features: Sequence[np.ndarray],
                 skipped: int) -> None:
        """Each backbone's features of ``items`` (rows of ``features[j]``) into its cache."""
        for j, (cache, block) in enumerate(zip(self.caches, features)):
            rows = [r for r, (_, _, missing) in enumerate(items) if j in missing]
            if rows:
                cache.add([items[r][1] for r in rows],
                          block if len(rows) == len(block) else block[rows])
        if self.contents is not None:
            for _, key, _ in items:
                if key in self.hashes:
                    self.contents.add(key, self.hashes.pop(key))
        self.report.n_computed += len(items)
        self.bar.update(len(items) + skipped)


def _extract_here(job: _Job, todo: list[_Todo], *, batch_size: int, workers: int | None) -> None:
    """Decode (threads, or processes feeding a GPU) and run each network in this process."""
    prefetch = max(engine.prefetch for engine in job.engines)
    workers = plan_threads().decode if workers is None else workers
    processes = use_processes(workers, prefetch, job.samples[todo[0][0]].path) and not any(
        job.samples[index].view for index, _, _ in todo)
    batches = iter_decoded_batches(
        todo, [engine.preprocess for engine in job.engines], batch_size=batch_size,
        workers=workers, load=None if processes else job.load, prefetch=prefetch,
        source_of=lambda item: job.samples[item[0]].path, processes=processes,
    )
    start = time.perf_counter()
    with contextlib.closing(batches):  # its decode workers stop on an error here too
        for number, batch in enumerate(batches):
            for (index, key, _), reason in batch.failures:
                job.failed(index, key, reason)
            features = [_run_missing(network, j, batch.items, batch.images[j])
                        for j, network in enumerate(job.engines)]
            job.computed(batch.items, features, len(batch.failures))
            if number == 1 and job.ahead >= 0:  # the first batch paid the start: time the second
                _say_cost(job, len(batch.items), time.perf_counter() - start)
            start = time.perf_counter() if number == 0 else start


_LONG = 600.0  # seconds of extraction worth a warning before it goes on


def _say_cost(job: _Job, images: int, seconds: float) -> None:
    """How long the rest will take, from one batch: a warning when it is long."""
    remaining = max(0, job.ahead - job.report.n_computed)
    if not images or not remaining:
        return
    per_image = seconds / images
    size = "x".join(map(str, job.engines[0].preprocess.size))
    text = (f"Extracting at {1000 * per_image:.0f} ms per image ({size} px): up to "
            f"{remaining:,} images, about {_duration(remaining * per_image)}.")
    if remaining * per_image > _LONG:
        _log.warning(Note(text + " A smaller image_size, a lighter backbone or a GPU is "
                                 "faster.", parameter="image_size"))
    else:
        _log.info(text)


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    return f"{seconds / 60:.0f} min" if seconds < 5400 else f"{seconds / 3600:.1f} h"


def _run_missing(network: FeatureEngine, j: int, items: Sequence[_Todo],
                 images: np.ndarray) -> np.ndarray:
    """Backbone ``j``'s features of ``items``, computed for the ones its cache misses (zeros
    elsewhere, never written: :meth:`_Job.computed` writes only the missing rows)."""
    rows = [r for r, (_, _, missing) in enumerate(items) if j in missing]
    if len(rows) == len(items):
        return network(images)
    out = np.zeros((len(items), network.num_features), np.float32)
    if rows:
        out[rows] = network(images[rows])
    return out


def _extract_on_ray(job: _Job, todo: list[_Todo], *, batch_size: int,
                    address: str | None) -> None:
    from graft.features.ray_engine import ray_features, ray_kind

    if any(job.samples[index].view for index, _, _ in todo):
        raise DataError("augment_views runs locally: leave out engine='ray' for it.",
                        parameter=("augment_views", "engine"))
    paths = [job.samples[index].path for index, _, _ in todo]
    for batch in ray_features(paths, job.engines, kind=ray_kind(job.engines),
                              batch_size=batch_size, address=address):
        for position, reason in batch.failures:
            index, key, _ = todo[position]
            job.failed(index, key, reason)
        job.computed([todo[p] for p in batch.positions], batch.features, len(batch.failures))


_STREAM_ROWS = 16384  # listed images extracted at a time: what is held, whatever the dataset
_ORDER = {split: i for i, split in enumerate(SPLITS)}  # train, val, test, then unsplit


@dataclass
class _Rows:
    """The usable rows of an extraction as compact columns (no Python object per row), in
    listing order while they are added, grouped by split once :meth:`finish` has run."""

    keys: np.ndarray = field(default_factory=lambda: np.zeros(0, "S40"))
    labels: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    splits: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int8))
    paths: np.ndarray = field(default_factory=lambda: np.zeros(0, "S1"))
    parts: list[tuple[np.ndarray, ...]] = field(default_factory=list)
    split_names: tuple[str, ...] = (*SPLITS, "")  # by the codes of _ORDER

    def add(self, samples: Sequence[Sample], keys: Sequence[str | None],
            index: dict[str, int]) -> None:
        usable = [(sample, key) for sample, key in zip(samples, keys) if key is not None]
        self.parts.append((
            np.array([key.encode() for _, key in usable], dtype="S40"),
            np.fromiter((index[s.label] for s, _ in usable), np.int64, count=len(usable)),
            np.fromiter((_ORDER.get(s.split, len(SPLITS)) for s, _ in usable), np.int8,
                        count=len(usable)),
            np.array([s.relpath.encode() for s, _ in usable], dtype=bytes),
        ))

    def finish(self) -> _Rows:
        if self.parts:
            columns = [np.concatenate([part[c] for part in self.parts]) for c in range(4)]
            order = np.argsort(columns[2], kind="stable")
            self.keys, self.labels, self.splits, self.paths = (c[order] for c in columns)
            self.parts = []
        return self

    def __len__(self) -> int:
        return len(self.keys)

    def key_list(self, start: int = 0, stop: int | None = None) -> list[str]:
        return [key.decode() for key in self.keys[start:stop]]

    def path_list(self, start: int = 0, stop: int | None = None) -> list[str]:
        return [path.decode() for path in self.paths[start:stop]]

    def split_array(self, start: int = 0, stop: int | None = None) -> np.ndarray:
        return np.array([self.split_names[c] for c in self.splits[start:stop]], dtype=object)

    def per_class(self, classes: Sequence[str]) -> Counter:
        counts = np.bincount(self.labels, minlength=len(classes))
        return Counter(dict(zip(classes, counts.tolist())))


@dataclass
class _Extracted:
    """A dataset extracted into the caches: its usable rows, grouped by split."""

    stream: DatasetStream
    caches: list[FeatureCache]
    rows: _Rows
    report: ExtractionReport
    contents: ContentIndex | None

    def matrix(self) -> np.ndarray:
        """Every row in one float32 matrix, filled block by block (no second full copy)."""
        width = sum(cache.num_features for cache in self.caches)
        out = np.empty((len(self.rows), width), dtype=np.float32)
        for start in range(0, len(self.rows), _GATHER_ROWS):
            stop = min(start + _GATHER_ROWS, len(self.rows))
            keys = self.rows.key_list(start, stop)
            if len(self.caches) == 1:
                self.caches[0].get(keys, out=out[start:stop])
            else:
                out[start:stop] = CachedFeatures(self.caches, keys).rows()
        return out

    def content_hashes(self) -> np.ndarray | None:
        """The content hash of every row, a block at a time (read from the files only where
        none is kept)."""
        if self.contents is None:
            return None
        out = np.zeros(len(self.rows), np.uint64)
        workers = plan_threads().cpus
        for start in range(0, len(self.rows), _GATHER_ROWS):
            stop = min(start + _GATHER_ROWS, len(self.rows))
            paths = [join(self.stream.root, p) for p in self.rows.path_list(start, stop)]
            out[start:stop] = self.contents.resolve(self.rows.key_list(start, stop), paths,
                                                    workers=workers)
        self.contents.close()
        return out


def _extract(dataset: ImageDataset | DatasetStream, engines: Sequence[FeatureEngine], *,
             cache_dir: str | os.PathLike | None, batch_size: int, workers: int | None,
             progress: bool, engine: str, address: str | None, min_per_class: int = 2,
             augment: tuple[str, ...] = (), hashes: bool = True) -> _Extracted:
    """Every image of ``dataset`` into the caches, listing it once, :data:`_STREAM_ROWS` images
    at a time (a held listing is a short stream): each usable row is recorded as it is
    extracted. A class with fewer than ``min_per_class`` usable images is refused."""
    stream = dataset if isinstance(dataset, DatasetStream) else DatasetStream.of(dataset)
    caches = [open_cache(e, cache_dir) for e in engines]
    contents = ContentIndex(cache_dir) if hashes else None
    forget_folders()  # resolved again: a symlinked folder may point elsewhere since last time
    start = time.perf_counter()
    report = ExtractionReport(n_images=len(stream))
    index = {label: i for i, label in enumerate(stream.classes)}
    rows = _Rows()
    seen = 0
    with _bar(len(stream), progress) as bar:
        # Ray: one job per part, so parts are larger (its start, seconds, is paid per part)
        for part in _parts(stream, _STREAM_ROWS * (4 if engine == "ray" else 1)):
            keys, done = extract_dataset(
                ImageDataset(root=stream.root, samples=part, classes=stream.classes,
                             layout=stream.layout), engines, caches, batch_size=batch_size,
                workers=workers, progress=progress, engine=engine, address=address, bar=bar,
                augment=augment, contents=contents,
                upcoming=len(stream) - seen - len(part) if not seen else None)
            seen += len(part)
            report.n_cached += done.n_cached
            report.n_computed += done.n_computed
            report.failures.extend(done.failures)
            rows.add(part, keys, index)
    report.seconds = time.perf_counter() - start
    report.failures.sort()
    rows.finish()
    _check_usable(stream.root, stream.classes, rows.per_class(stream.classes), min_per_class)
    return _Extracted(stream, caches, rows, report, contents)


def extract_views(
    dataset: ImageDataset | DatasetStream,
    engines: FeatureEngine | Sequence[FeatureEngine],
    *,
    views: int,
    augment: tuple[str, ...],
    split: str = "train",
    cache_dir: str | os.PathLike | None = None,
    batch_size: int = 32,
    workers: int | None = None,
    progress: bool = True,
) -> tuple[np.ndarray, np.ndarray, ExtractionReport]:
    """Features of ``views`` random augmented views of every ``split`` image, cached like the rest.

    Returns:
        Features, class indices (into ``dataset.classes``) and the extraction report.
    """
    listed = dataset.samples if isinstance(dataset, ImageDataset) else dataset
    samples = [dataclasses.replace(s, view=v) for s in listed if s.split == split
               for v in range(1, views + 1)]
    views_of = ImageDataset(root=dataset.root, samples=samples, classes=list(dataset.classes),
                            layout=dataset.layout)
    done = _extract(views_of, _as_list(engines), cache_dir=cache_dir, batch_size=batch_size,
                    workers=workers, progress=progress, engine="local", address=None,
                    min_per_class=0, augment=augment, hashes=False)
    return done.matrix(), done.rows.labels, done.report


def _as_list(engines: FeatureEngine | Sequence[FeatureEngine]) -> list[FeatureEngine]:
    return [engines] if isinstance(engines, FeatureEngine) else list(engines)


def extract_feature_set(
    dataset: ImageDataset | DatasetStream,
    engines: FeatureEngine | Sequence[FeatureEngine],
    backbones: Sequence[dict[str, Any]],
    *,
    cache_dir: str | os.PathLike | None = None,
    batch_size: int = 32,
    workers: int | None = None,
    progress: bool = True,
    min_per_class: int = 2,
    engine: str = "local",
    address: str | None = None,
    out_of_core: bool = False,
) -> tuple[FeatureSet, ExtractionReport]:
    """Extract (or read from the cache) the features of ``dataset``: into one float32 matrix in
    memory, or with ``out_of_core`` left in the cache (a :class:`CachedFeatures` view). The
    listing is read once and never held whole: what stays is each usable row (or its key) with
    its label, relative path, split and content hash, train rows first, then val, then test.

    Args:
        engines: One engine, or one per fused backbone (features are concatenated in order).
        backbones: The config of each backbone, stored with the features.
        min_per_class: Fewer usable images in a class is an error (2 for training; 0 to score
            whatever there is).
    """
    engines = _as_list(engines)
    done = _extract(dataset, engines, cache_dir=cache_dir, batch_size=batch_size,
                    workers=workers, progress=progress, engine=engine, address=address,
                    min_per_class=min_per_class)
    stream, rows = done.stream, done.rows
    feature_set = FeatureSet(
        features=CachedFeatures(done.caches, rows.key_list()) if out_of_core else done.matrix(),
        labels=rows.labels,
        label_names=list(stream.classes),
        paths=rows.path_list(),
        split=rows.split_array(),
        backbones=list(backbones),
        key=fused_key([engine.key for engine in engines]),
        root=str(stream.root),
        split_source=stream.split_source,
        split_params=dict(stream.split_params),
        skipped=list(done.report.failures),
        content_hashes=done.content_hashes(),
    )
    return feature_set, done.report


def extract_to_file(
    dataset: ImageDataset | DatasetStream,
    engines: FeatureEngine | Sequence[FeatureEngine],
    backbones: Sequence[dict[str, Any]],
    out: str | os.PathLike,
    *,
    cache_dir: str | os.PathLike | None = None,
    batch_size: int = 32,
    workers: int | None = None,
    progress: bool = True,
    engine: str = "local",
    address: str | None = None,
) -> tuple[Path, ExtractionReport]:
    """Extract ``dataset`` into the feature file ``out``: the listing is read once (never held
    whole), every image extracted into the cache, then each usable row copied from the cache
    to the file a block at a time: train, then val, then test, each split in listing order."""
    from graft._version import __version__

    engines = _as_list(engines)
    done = _extract(dataset, engines, cache_dir=cache_dir, batch_size=batch_size,
                    workers=workers, progress=progress, engine=engine, address=address)
    stream, rows = done.stream, done.rows
    hashes = done.content_hashes()
    with FeatureFileWriter(out, num_features=sum(e.num_features for e in engines),
                           label_names=list(stream.classes), rows=len(rows)) as writer:
        for start in range(0, len(rows), _GATHER_ROWS):
            stop = min(start + _GATHER_ROWS, len(rows))
            writer.write(start, CachedFeatures(done.caches, rows.key_list(start, stop)),
                         rows.labels[start:stop], rows.path_list(start, stop),
                         rows.split_array(start, stop), hashes[start:stop])
        return writer.finish({
            "graft_version": __version__,
            "root": str(stream.root),
            "layout": stream.layout,
            "backbones": list(backbones),
            "fusion": FUSION if len(engines) > 1 else "none",
            "feature_key": fused_key([engine.key for engine in engines]),
            "split_source": stream.split_source,
            "split_params": stream.split_params,
            "skipped": [list(x) for x in done.report.failures],
        }), done.report


def _parts(samples: Iterable[Sample], size: int) -> Iterator[list[Sample]]:
    part: list[Sample] = []
    for sample in samples:
        part.append(sample)
        if len(part) == size:
            yield part
            part = []
    if part:
        yield part


def _check_usable(root: Path | str, classes: Sequence[str], per_class: Counter,
                  minimum: int = 2) -> None:
    """Refuse a class with fewer than ``minimum`` usable images."""
    few = [label for label in classes if per_class[label] < minimum]
    if few:
        details = ", ".join(f"{label!r} ({per_class[label]} usable)" for label in few)
        raise DataError(f"Class folder(s) with fewer than {minimum} usable images under {root}: "
                        f"{details}. Add images to them, or remove the folder(s).")
