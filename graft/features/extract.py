"""Extracting a dataset's features: cached, incremental, resumable, with a progress bar.

Fused backbones (``vgg16+resnet50``) are extracted in one pass, each image decoded once, and
each backbone keeps its own cache: features computed for ``vgg16`` alone are reused by any
fusion that includes it, and the other way round.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
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
from graft.data.dataset import SPLITS, DatasetStream, ImageDataset, Sample
from graft.data.images import decode_image
from graft.data.preprocess import PreprocessConfig
from graft.errors import DataError
from graft.features.engine import FeatureEngine, fused_key
from graft.features.store import (
    CachedFeatures,
    FeatureCache,
    FeatureFileWriter,
    FeatureSet,
    fingerprint,
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

_GATHER_ROWS = 4096
_LOOKUP_BLOCK = 4096  # samples fingerprinted and looked up in the cache index at once


@dataclass
class ExtractionReport:
    """What one extraction did: how many images came from the cache, were computed, or failed."""

    n_images: int = 0
    n_cached: int = 0
    n_computed: int = 0
    failures: list[tuple[str, str]] = field(default_factory=list)
    seconds: float = 0.0
    n_vanished: int = 0  # listed when extracting, gone from the listing when writing the file

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
        if self.n_vanished:
            text += (f", {self.n_vanished} removed from the folders while graft read them (run "
                     f"the command again)")
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
) -> tuple[list[str | None], ExtractionReport]:
    """Make sure every image of ``dataset`` is in each backbone's cache; compute only what is missing.

    Args:
        engines: One engine per (fused) backbone.
        caches: The cache of each engine, in the same order.
        augment: How samples with ``view > 0`` are augmented (see ``augment_for_network``);
            each view is cached under its own key, reproducible from the file and the view.
        engine: ``local`` (this process) or ``ray`` (decode and run the graphs on a Ray
            cluster at ``address``; only this process writes the cache).
        bar: A progress bar over every image (cached ones included) to advance, kept open;
            by default one over the images to compute.

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
    keys: list[str | None] = []
    todo: list[tuple[int, str, tuple[int, ...]]] = []
    for first in range(0, len(dataset.samples), _LOOKUP_BLOCK):  # one index query per block
        block: list[tuple[int, str]] = []
        for index in range(first, min(first + _LOOKUP_BLOCK, len(dataset.samples))):
            sample = dataset.samples[index]
            try:
                block.append((index, view_key(fingerprint(sample.path, sample.stamp),
                                              sample.view, augment)))
            except OSError as exc:
                report.failures.append((sample.relpath, f"cannot stat ({exc.strerror or exc})"))
            keys.append(None)
        found = [cache.lookup([key for _, key in block]) for cache in caches]
        for index, key in block:
            reason = next((failed[key] for _, failed in found if key in failed), None)
            missing = tuple(j for j, (present, _) in enumerate(found) if key not in present)
            if reason is not None:
                report.failures.append((dataset.samples[index].relpath, reason))
                continue
            if missing:
                todo.append((index, key, missing))
            else:
                report.n_cached += 1
            keys[index] = key
    shared = bar is not None
    if shared:
        bar.update(len(dataset.samples) - len(todo))  # cached, or failed before
    else:
        bar = tqdm(total=len(todo), unit="img", desc="Extracting features",
                   disable=not progress or not todo, dynamic_ncols=True, smoothing=0.1)
    try:
        if engine == "ray" and todo:
            _extract_on_ray(dataset, engines, caches, todo, keys, report, bar,
                            batch_size=batch_size, address=address)
            todo = []

        def load(item: tuple, configs: Sequence[PreprocessConfig]) -> list[np.ndarray]:
            sample = dataset.samples[item[0]]
            if sample.view == 0:
                return preprocess(sample.path, configs)
            image = decode_image(sample.path, min_size=draft_size(configs))
            seed = int(item[1][:15], 16)  # the view's key: the same view every time
            return [augment_for_network(image, config, augment, np.random.default_rng(seed))
                    for config in configs]

        prefetch = max(engine.prefetch for engine in engines)
        workers = plan_threads().decode if workers is None else workers
        processes = bool(todo) and use_processes(
            workers, prefetch, dataset.samples[todo[0][0]].path) and not any(
            dataset.samples[index].view for index, _, _ in todo)
        batches = iter_decoded_batches(
            todo, [engine.preprocess for engine in engines], batch_size=batch_size,
            workers=workers, load=None if processes else load, prefetch=prefetch,
            source_of=lambda item: dataset.samples[item[0]].path, processes=processes,
        )
        with contextlib.closing(batches):  # its decode workers stop on an error here too
            for batch in batches:
                for (index, key, _), reason in batch.failures:
                    _unreadable(dataset, caches, keys, report, index, key, reason)
                for j, (network, cache) in enumerate(zip(engines, caches)):
                    rows = [r for r, (_, _, missing) in enumerate(batch.items) if j in missing]
                    if rows:
                        images = batch.images[j]
                        images = images if len(rows) == len(images) else images[rows]
                        cache.add([batch.items[r][1] for r in rows], network(images))
                report.n_computed += len(batch.items)
                bar.update(len(batch.items) + len(batch.failures))
    finally:
        # Ctrl-C or an error keeps every complete batch: the next run resumes from here.
        for cache in caches:
            cache.flush()
        if not shared:
            bar.close()
    report.failures.sort()
    report.seconds = time.perf_counter() - start
    return keys, report


def _unreadable(dataset: ImageDataset, caches: Sequence[FeatureCache], keys: list[str | None],
                report: ExtractionReport, index: int, key: str, reason: str) -> None:
    """Record an image that could not be decoded: reported, cached as failed, not used."""
    report.failures.append((dataset.samples[index].relpath, reason))
    for cache in caches:
        cache.add_failure(key, reason)
    keys[index] = None


def _extract_on_ray(dataset: ImageDataset, engines: Sequence[FeatureEngine],
                    caches: Sequence[FeatureCache], todo: list[tuple[int, str, tuple[int, ...]]],
                    keys: list[str | None], report: ExtractionReport, bar: Any, *,
                    batch_size: int, address: str | None) -> None:
    from graft.scale.ray_engine import ray_features

    if any(dataset.samples[index].view for index, _, _ in todo):
        raise DataError("--augment-views runs locally: leave out --engine ray for it.")
    paths = [dataset.samples[index].path for index, _, _ in todo]
    for batch in ray_features(paths, engines, batch_size=batch_size, address=address):
        for position, reason in batch.failures:
            index, key, _ = todo[position]
            _unreadable(dataset, caches, keys, report, index, key, reason)
        for j, (cache, block) in enumerate(zip(caches, batch.features)):
            rows = [r for r, position in enumerate(batch.positions) if j in todo[position][2]]
            if rows:
                cache.add([todo[batch.positions[r]][1] for r in rows], block[rows])
        report.n_computed += len(batch.positions)
        bar.update(len(batch.positions) + len(batch.failures))


@dataclass
class _Extracted:
    """A dataset's usable rows after extraction: cache keys, samples and class indices."""

    caches: list[FeatureCache]
    keys: list[str]
    samples: list[Sample]
    labels: np.ndarray
    report: ExtractionReport

    def features(self, start: int = 0, stop: int | None = None) -> np.ndarray:
        """Rows ``start:stop``, the backbones' features fused (see :func:`fuse_features`)."""
        return self.cached().rows(start, stop)

    def cached(self) -> CachedFeatures:
        """Every row, left in the cache (read a chunk at a time)."""
        return CachedFeatures(self.caches, self.keys)

    def matrix(self) -> np.ndarray:
        """Every row in one float32 matrix, filled block by block (no second full copy)."""
        width = sum(cache.num_features for cache in self.caches)
        out = np.empty((len(self.keys), width), dtype=np.float32)
        for start in range(0, len(self.keys), _GATHER_ROWS):
            stop = min(start + _GATHER_ROWS, len(self.keys))
            if len(self.caches) == 1:
                self.caches[0].get(self.keys[start:stop], out=out[start:stop])
            else:
                out[start:stop] = self.features(start, stop)
        return out

    def grouped_by_split(self) -> _Extracted:
        """The same rows, train then val then test (stable), so each split is one slice."""
        rank = {"train": 0, "val": 1, "test": 2}
        order = sorted(range(len(self.samples)), key=lambda i: rank.get(self.samples[i].split, 3))
        return _Extracted(self.caches, [self.keys[i] for i in order],
                          [self.samples[i] for i in order], self.labels[order], self.report)


def _extract_usable(
    dataset: ImageDataset,
    engines: Sequence[FeatureEngine],
    *,
    cache_dir: str | os.PathLike | None,
    batch_size: int,
    workers: int | None,
    progress: bool,
    min_per_class: int = 2,
    augment: tuple[str, ...] = (),
    engine: str = "local",
    address: str | None = None,
) -> _Extracted:
    caches = [open_cache(e, cache_dir) for e in engines]
    keys, report = extract_dataset(dataset, engines, caches, batch_size=batch_size,
                                   workers=workers, progress=progress, augment=augment,
                                   engine=engine, address=address)
    rows = [i for i, key in enumerate(keys) if key is not None]
    samples = [dataset.samples[i] for i in rows]
    _check_usable(dataset.root, dataset.classes, Counter(s.label for s in samples),
                  min_per_class)
    index = {label: i for i, label in enumerate(dataset.classes)}
    return _Extracted(
        caches=caches,
        keys=[keys[i] for i in rows],
        samples=samples,
        labels=np.array([index[s.label] for s in samples], dtype=np.int64),
        report=report,
    )


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
    done = _extract_usable(views_of, _as_list(engines),
                           cache_dir=cache_dir, batch_size=batch_size, workers=workers,
                           progress=progress, min_per_class=0, augment=augment)
    return done.features(), done.labels, done.report


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
    memory, or with ``out_of_core`` left in the cache (a :class:`CachedFeatures` view). A
    :class:`DatasetStream` is listed a part at a time and never held whole: what stays is each
    usable row (or its key) with its label, relative path and split.

    Args:
        engines: One engine, or one per fused backbone (features are concatenated in order).
        backbones: The config of each backbone, stored with the features.
        min_per_class: Fewer usable images in a class is an error (2 for training; 0 to score
            whatever there is).
    """
    engines = _as_list(engines)
    if isinstance(dataset, DatasetStream):
        return _stream_feature_set(dataset, engines, backbones, cache_dir=cache_dir,
                                   batch_size=batch_size, workers=workers, progress=progress,
                                   min_per_class=min_per_class, engine=engine, address=address,
                                   out_of_core=out_of_core)
    done = _extract_usable(dataset, engines, cache_dir=cache_dir, batch_size=batch_size,
                           workers=workers, progress=progress, min_per_class=min_per_class,
                           engine=engine, address=address).grouped_by_split()
    feature_set = FeatureSet(
        features=done.cached() if out_of_core else done.matrix(),
        labels=done.labels,
        label_names=list(dataset.classes),
        paths=[s.relpath for s in done.samples],
        split=np.array([s.split for s in done.samples], dtype=object),
        backbones=list(backbones),
        key=fused_key([engine.key for engine in engines]),
        root=str(dataset.root),
        split_source=dataset.split_source,
        split_params=dict(dataset.split_params),
        skipped=list(done.report.failures),
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
    """Extract ``dataset`` into the feature file ``out``, a part of the listing at a time (a
    :class:`DatasetStream` is never held whole): first every image into the cache, counting the
    usable ones of each split, then, listing once more, each row from the cache to its place in
    the file: train, then val, then test, each split in listing order."""
    from graft import __version__

    engines = _as_list(engines)
    stream = dataset if isinstance(dataset, DatasetStream) else DatasetStream.of(dataset)
    caches = [open_cache(e, cache_dir) for e in engines]
    per_split, report = _extract_parts(stream, engines, caches, batch_size=batch_size,
                                       workers=workers, progress=progress, engine=engine,
                                       address=address)
    with FeatureFileWriter(out, num_features=sum(e.num_features for e in engines),
                           label_names=list(stream.classes),
                           rows=sum(per_split.values())) as writer:
        _write_rows(stream, caches, writer, per_split, report)
        report.failures.sort()
        path = writer.finish({
            "graft_version": __version__,
            "root": str(stream.root),
            "layout": stream.layout,
            "backbones": list(backbones),
            "fusion": FUSION if len(engines) > 1 else "none",
            "feature_key": fused_key([engine.key for engine in engines]),
            "split_source": stream.split_source,
            "split_params": stream.split_params,
            "skipped": [list(x) for x in report.failures],
        })
    return path, report


def _extract_parts(stream: DatasetStream, engines: Sequence[FeatureEngine],
                   caches: Sequence[FeatureCache], *, batch_size: int, workers: int | None,
                   progress: bool, engine: str, address: str | None,
                   min_per_class: int = 2) -> tuple[Counter, ExtractionReport]:
    """Every image of ``stream`` into the caches, :data:`_STREAM_ROWS` listed images at a time:
    the usable rows of each split, and the report. A class with fewer than ``min_per_class``
    usable images is refused."""
    forget_folders()  # resolved again: a symlinked folder may point elsewhere since last time
    start = time.perf_counter()
    report = ExtractionReport(n_images=len(stream))
    per_split: Counter = Counter()  # usable rows
    per_class: Counter = Counter()
    bar = tqdm(total=len(stream), unit="img", desc="Extracting features", disable=not progress,
               dynamic_ncols=True, smoothing=0.1)
    with bar:
        # Ray: one job per part, so parts are larger (its start, seconds, is paid per part)
        for part in _parts(stream, _STREAM_ROWS * (4 if engine == "ray" else 1)):
            keys, done = extract_dataset(
                ImageDataset(root=stream.root, samples=part, classes=stream.classes,
                             layout=stream.layout), engines, caches, batch_size=batch_size,
                workers=workers, progress=progress, engine=engine, address=address, bar=bar)
            report.n_cached += done.n_cached
            report.n_computed += done.n_computed
            report.failures.extend(done.failures)
            usable = [sample for sample, key in zip(part, keys) if key is not None]
            per_split.update(sample.split for sample in usable)
            per_class.update(sample.label for sample in usable)
    report.seconds = time.perf_counter() - start
    _check_usable(stream.root, stream.classes, per_class, min_per_class)
    return per_split, report


class _RowsInMemory:
    """:func:`_write_rows`'s target for training: the rows in one float32 matrix, or (out of
    core) only their cache keys, with labels, paths and splits; the writer interface of
    :class:`FeatureFileWriter` (``rows``, ``write``, ``move``, ``keep``)."""

    def __init__(self, rows: int, num_features: int, *, keys_only: bool) -> None:
        self.rows = rows
        self.keys: list[str] | None = [""] * rows if keys_only else None
        self.features = None if keys_only else np.empty((rows, num_features), np.float32)
        self.labels = np.zeros(rows, np.int64)
        self.paths: list[str] = [""] * rows
        self.split = np.empty(rows, dtype=object)

    def write(self, start: int, features: CachedFeatures, labels: Sequence[int],
              paths: Sequence[str], split: Sequence[str]) -> None:
        stop = start + len(paths)
        if self.keys is not None:
            self.keys[start:stop] = features.keys
        else:
            self.features[start:stop] = features.rows()
        self.labels[start:stop] = labels
        self.paths[start:stop] = paths
        self.split[start:stop] = list(split)

    def move(self, start: int, stop: int, to: int) -> None:
        count = stop - start
        for column in (self.keys, self.features, self.labels, self.paths, self.split):
            if column is not None:
                column[to: to + count] = column[start:stop]

    def keep(self, rows: int) -> None:  # only ever fewer rows (files gone since extracting)
        if self.keys is not None:
            self.keys = self.keys[:rows]
        if self.features is not None:
            self.features = self.features[:rows]
        self.labels, self.paths, self.split = (self.labels[:rows], self.paths[:rows],
                                               self.split[:rows])
        self.rows = rows


def _stream_feature_set(stream: DatasetStream, engines: list[FeatureEngine],
                        backbones: Sequence[dict[str, Any]], *,
                        cache_dir: str | os.PathLike | None, batch_size: int,
                        workers: int | None, progress: bool, min_per_class: int, engine: str,
                        address: str | None, out_of_core: bool
                        ) -> tuple[FeatureSet, ExtractionReport]:
    """:func:`extract_feature_set` of a stream: extracted a part at a time, then each usable
    row read from the cache into its split's place, as :func:`extract_to_file` writes a file;
    held are the rows (or their keys) with their labels, paths and splits, not the listing."""
    caches = [open_cache(e, cache_dir) for e in engines]
    per_split, report = _extract_parts(stream, engines, caches, batch_size=batch_size,
                                       workers=workers, progress=progress, engine=engine,
                                       address=address, min_per_class=min_per_class)
    rows = _RowsInMemory(sum(per_split.values()), sum(c.num_features for c in caches),
                         keys_only=out_of_core)
    _write_rows(stream, caches, rows, per_split, report, min_per_class)
    report.failures.sort()
    feature_set = FeatureSet(
        features=CachedFeatures(caches, rows.keys) if out_of_core else rows.features,
        labels=rows.labels,
        label_names=list(stream.classes),
        paths=rows.paths,
        split=rows.split,
        backbones=list(backbones),
        key=fused_key([engine.key for engine in engines]),
        root=str(stream.root),
        split_source=stream.split_source,
        split_params=dict(stream.split_params),
        skipped=list(report.failures),
    )
    return feature_set, report


_STREAM_ROWS = 16384  # listed images extracted at a time: what is held, whatever the dataset
_CHANGED = "changed or removed while graft read it; run the command again"


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


def _write_rows(stream: DatasetStream, caches: Sequence[FeatureCache], writer: Any,
                per_split: Counter, report: ExtractionReport, min_per_class: int = 2) -> None:
    """Each usable row (in the cache, not failed) from the cache to its split's place in the
    file, listing once, a block per split at a time. A file changed since it was extracted is
    reported, and the rows after it moved up."""
    index = {label: i for i, label in enumerate(stream.classes)}
    # train, val, test, then any other split an unsplit dataset has (""), as grouped_by_split
    order = [*SPLITS, *sorted(set(per_split) - set(SPLITS))]
    first = dict(zip(order, np.cumsum([0] + [per_split[s] for s in order[:-1]]).tolist()))
    cursor = dict(first)
    waiting: dict[str, list[Sample]] = {split: [] for split in order}
    rows_of: Counter = Counter()
    changed = 0  # listed files whose key is no longer in the cache (reported by name)

    def flush(split: str) -> None:
        nonlocal changed
        block, waiting[split] = waiting[split], []
        keys, listed = [], []
        for sample in block:
            try:
                keys.append(fingerprint(sample.path, sample.stamp))
                listed.append(sample)
            except OSError:
                pass  # reported when extracting, or gone since (counted below)
        found = [cache.lookup(keys) for cache in caches]
        kept = []
        for sample, key in zip(listed, keys):
            if all(key in present for present, _ in found):
                kept.append((sample, key))
            elif not any(key in failed for _, failed in found):
                report.failures.append((sample.relpath, _CHANGED))
                changed += 1
        room = first[split] + per_split[split] - cursor[split]
        if len(kept) > room:  # more usable than when extracting (a file readable only now)
            for sample, _ in kept[room:]:
                report.failures.append((sample.relpath, _CHANGED))
            kept = kept[:room]
        if kept:
            writer.write(cursor[split], CachedFeatures(caches, [key for _, key in kept]),
                         [index[s.label] for s, _ in kept], [s.relpath for s, _ in kept],
                         [s.split for s, _ in kept])
            cursor[split] += len(kept)
            rows_of.update(s.label for s, _ in kept)

    for sample in stream:
        if sample.split in waiting:
            waiting[sample.split].append(sample)
            if len(waiting[sample.split]) == _GATHER_ROWS:
                flush(sample.split)
    for split in order:
        flush(split)
    end = 0  # close the gaps left by files that changed (rare): each split's rows moved up
    for split in order:
        if first[split] != end:
            writer.move(first[split], cursor[split], end)
        end += cursor[split] - first[split]
    if end != writer.rows:
        # usable when extracted, now gone (removed, unreadable) or rewritten (named above)
        report.n_vanished = max(0, writer.rows - end - changed)
        writer.keep(end)
        _check_usable(stream.root, stream.classes, rows_of, min_per_class)
