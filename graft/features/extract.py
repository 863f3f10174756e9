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

__all__ = ["ExtractionReport", "open_cache", "extract_dataset", "extract_feature_set",
           "extract_to_file"]

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


def _usable(dataset: ImageDataset, keys: list[str | None]) -> list[int]:
    rows = [i for i, key in enumerate(keys) if key is not None]
    counts: dict[str, int] = {}
    for i in rows:
        counts[dataset.samples[i].label] = counts.get(dataset.samples[i].label, 0) + 1
    few = [label for label in dataset.classes if counts.get(label, 0) < 2]
    if few:
        details = ", ".join(f"{label!r} ({counts.get(label, 0)} usable)" for label in few)
        raise DataError(
            f"Class folder(s) with fewer than 2 usable images under {dataset.root}: {details}. "
            f"Add images to them, or remove the folder(s)."
        )
    return rows


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
) -> tuple[FeatureSet, ExtractionReport]:
    """Extract (or read from the cache) the features of ``dataset`` into memory."""
    cache = open_cache(engine, cache_dir)
    keys, report = extract_dataset(dataset, engine, cache=cache, batch_size=batch_size,
                                   workers=workers, progress=progress)
    rows = _usable(dataset, keys)
    samples = [dataset.samples[i] for i in rows]
    index = {label: i for i, label in enumerate(dataset.classes)}
    features = cache.get([keys[i] for i in rows])
    feature_set = FeatureSet(
        features=features,
        labels=np.array([index[s.label] for s in samples], dtype=np.int64),
        label_names=list(dataset.classes),
        paths=[s.relpath for s in samples],
        split=np.array([s.split for s in samples], dtype=object),
        backbone=backbone,
        key=engine.key,
        root=str(dataset.root),
        split_source=dataset.split_source,
        split_params=dict(dataset.split_params),
        skipped=list(report.failures),
    )
    return feature_set, report


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
    cache = open_cache(engine, cache_dir)
    keys, report = extract_dataset(dataset, engine, cache=cache, batch_size=batch_size,
                                   workers=workers, progress=progress)
    rows = _usable(dataset, keys)
    samples = [dataset.samples[i] for i in rows]
    index = {label: i for i, label in enumerate(dataset.classes)}
    usable_keys = [keys[i] for i in rows]
    chunks = (cache.get(usable_keys[i: i + _GATHER_ROWS])
              for i in range(0, len(usable_keys), _GATHER_ROWS))
    path = write_feature_file(
        out,
        chunks=chunks,
        n_rows=len(rows),
        num_features=engine.num_features,
        labels=np.array([index[s.label] for s in samples]),
        label_names=list(dataset.classes),
        paths=[s.relpath for s in samples],
        split=[s.split for s in samples],
        attrs=_attrs(dataset, engine, backbone, report),
    )
    return path, report
