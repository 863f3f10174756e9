"""Extracting a dataset's features: cached, incremental, resumable, with a progress bar."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from graft.config import resolve_cache_dir
from graft.data.dataset import ImageDataset
from graft.errors import DataError
from graft.features.engine import FeatureEngine, iter_decoded_batches
from graft.features.store import FeatureCache, FeatureSet, fingerprint, write_feature_file

__all__ = [
    "ExtractionReport",
    "extract_dataset",
    "extract_feature_set",
    "extract_to_file",
    "open_cache",
]

_GATHER_ROWS = 4096


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

    def failure_lines(self) -> list[str]:
        return [f"  {path}: {reason}" for path, reason in self.failures]


def open_cache(engine: FeatureEngine, cache_dir: str | os.PathLike | None = None,
               shard_size: int = 512) -> FeatureCache:
    """The on-disk feature cache for ``engine``'s backbone."""
    root = resolve_cache_dir(cache_dir) / "features" / engine.key
    return FeatureCache(root, engine.num_features, shard_size=shard_size)


def extract_dataset(
    dataset: ImageDataset,
    engine: FeatureEngine,
    *,
    cache: FeatureCache,
    batch_size: int = 32,
    workers: int | None = None,
    progress: bool = True,
) -> tuple[list[str | None], ExtractionReport]:
    """Make sure every image of ``dataset`` is in ``cache``; compute only the missing ones.

    Returns:
        The cache key of every sample (None for a file that could not be read), and a report.
    """
    start = time.perf_counter()
    report = ExtractionReport(n_images=len(dataset.samples))
    keys: list[str | None] = []
    todo: list[tuple[int, str]] = []
    for index, sample in enumerate(dataset.samples):
        try:
            key = fingerprint(sample.path)
        except OSError as exc:
            report.failures.append((sample.relpath, f"cannot stat ({exc.strerror or exc})"))
            keys.append(None)
            continue
        if key in cache:
            report.n_cached += 1
        elif (reason := cache.failure(key)) is not None:
            report.failures.append((sample.relpath, reason))
            key = None
        else:
            todo.append((index, key))
        keys.append(key)
    bar = tqdm(total=len(todo), unit="img", desc="Extracting features", disable=not progress or
               not todo, dynamic_ncols=True, smoothing=0.1)
    try:
        batches = iter_decoded_batches(
            todo, engine.preprocess, batch_size=batch_size, workers=workers,
            path_of=lambda item: dataset.samples[item[0]].path,
        )
        for batch in batches:
            for (index, key), reason in batch.failures:
                report.failures.append((dataset.samples[index].relpath, reason))
                cache.add_failure(key, reason)
                keys[index] = None
            if batch.items:
                cache.add([key for _, key in batch.items], engine(batch.images))
                report.n_computed += len(batch.items)
            bar.update(len(batch.items) + len(batch.failures))
    finally:
        # Ctrl-C or an error keeps every complete batch: the next run resumes from here.
        cache.flush()
        bar.close()
    report.failures.sort()
    report.seconds = time.perf_counter() - start
    return keys, report


@dataclass
class _Extracted:
    """A dataset's usable rows after extraction: cache keys, samples and class indices."""

    cache: FeatureCache
    keys: list[str]
    samples: list[Any]
    labels: np.ndarray
    report: ExtractionReport


def _extract_usable(
    dataset: ImageDataset,
    engine: FeatureEngine,
    *,
    cache_dir: str | os.PathLike | None,
    batch_size: int,
    workers: int | None,
    progress: bool,
    min_per_class: int = 2,
) -> _Extracted:
    cache = open_cache(engine, cache_dir)
    keys, report = extract_dataset(dataset, engine, cache=cache, batch_size=batch_size,
                                   workers=workers, progress=progress)
    rows = [i for i, key in enumerate(keys) if key is not None]
    samples = [dataset.samples[i] for i in rows]
    counts: dict[str, int] = {}
    for sample in samples:
        counts[sample.label] = counts.get(sample.label, 0) + 1
    few = [label for label in dataset.classes if counts.get(label, 0) < min_per_class]
    if few:
        details = ", ".join(f"{label!r} ({counts.get(label, 0)} usable)" for label in few)
        raise DataError(
            f"Class folder(s) with fewer than {min_per_class} usable images under "
            f"{dataset.root}: {details}. Add images to them, or remove the folder(s)."
        )
    index = {label: i for i, label in enumerate(dataset.classes)}
    return _Extracted(
        cache=cache,
        keys=[keys[i] for i in rows],
        samples=samples,
        labels=np.array([index[s.label] for s in samples], dtype=np.int64),
        report=report,
    )


def _attrs(dataset: ImageDataset, engine: FeatureEngine, backbone: dict[str, Any],
           report: ExtractionReport) -> dict[str, Any]:
    from graft import __version__

    return {
        "graft_version": __version__,
        "root": str(dataset.root),
        "layout": dataset.layout,
        "backbone": backbone,
        "preprocess": engine.preprocess.to_dict(),
        "feature_key": engine.key,
        "split_source": dataset.split_source,
        "split_params": dataset.split_params,
        "skipped": [list(x) for x in report.failures],
    }


def extract_feature_set(
    dataset: ImageDataset,
    engine: FeatureEngine,
    backbone: dict[str, Any],
    *,
    cache_dir: str | os.PathLike | None = None,
    batch_size: int = 32,
    workers: int | None = None,
    progress: bool = True,
    min_per_class: int = 2,
) -> tuple[FeatureSet, ExtractionReport]:
    """Extract (or read from the cache) the features of ``dataset`` into memory.

    Args:
        min_per_class: Fewer usable images in a class is an error (2 for training; 0 to score
            whatever there is).
    """
    done = _extract_usable(dataset, engine, cache_dir=cache_dir, batch_size=batch_size,
                           workers=workers, progress=progress, min_per_class=min_per_class)
    feature_set = FeatureSet(
        features=done.cache.get(done.keys),
        labels=done.labels,
        label_names=list(dataset.classes),
        paths=[s.relpath for s in done.samples],
        split=np.array([s.split for s in done.samples], dtype=object),
        backbone=backbone,
        key=engine.key,
        root=str(dataset.root),
        split_source=dataset.split_source,
        split_params=dict(dataset.split_params),
        skipped=list(done.report.failures),
    )
    return feature_set, done.report


def extract_to_file(
    dataset: ImageDataset,
    engine: FeatureEngine,
    backbone: dict[str, Any],
    out: str | os.PathLike,
    *,
    cache_dir: str | os.PathLike | None = None,
    batch_size: int = 32,
    workers: int | None = None,
    progress: bool = True,
) -> tuple[Path, ExtractionReport]:
    """Extract ``dataset`` into the feature file ``out``, streaming from the cache (flat memory)."""
    done = _extract_usable(dataset, engine, cache_dir=cache_dir, batch_size=batch_size,
                           workers=workers, progress=progress)
    chunks = (done.cache.get(done.keys[i: i + _GATHER_ROWS])
              for i in range(0, len(done.keys), _GATHER_ROWS))
    path = write_feature_file(
        out,
        chunks=chunks,
        n_rows=len(done.keys),
        num_features=engine.num_features,
        labels=done.labels,
        label_names=list(dataset.classes),
        paths=[s.relpath for s in done.samples],
        split=[s.split for s in done.samples],
        attrs=_attrs(dataset, engine, backbone, done.report),
    )
    return path, done.report
