"""``graft data check``: what is in a dataset, and what would make its score lie.

Per split and class: counts and the imbalance ratio; image sizes and modes; unreadable files with
the reason. Then the problems: **exact duplicates** (the same file content, by SHA-256) and
**near duplicates** (a 64-bit difference hash of the 9x8 grayscale thumbnail within
:data:`NEAR_BITS` bits: resized, re-encoded or lightly edited copies), each listed within a split
and, above all, **across train/val/test** (a leak: the test score then measures memory), and the
same image under two classes (**label conflicts**).

Unsplit folders are checked under the split ``graft train`` would make with the same options.
:func:`split_leaks` is the cheap part (exact duplicates across splits and label conflicts, from
the content hashes extraction keeps) that ``graft train`` runs and reports.
"""

from __future__ import annotations

import hashlib
import io
import os
from collections import Counter, defaultdict
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError

from graft.data.dataset import ImageDataset, Sample
from graft.data.download import sha256_of
from graft.data.images import decode_image
from graft.data.storage import basename, is_uri, join, read_bytes
from graft.errors import ImageError
from graft.page import CSS, table
from graft.system import available_cpus

__all__ = ["NEAR_BITS", "CheckReport", "check_dataset", "difference_hash", "split_leaks",
           "write_check_page"]

NEAR_BITS = 4  # near duplicates differ in at most this many of the 64 hash bits
_BANDS = NEAR_BITS + 1  # pigeonhole: two hashes within NEAR_BITS agree on at least one band
_SIZE_BUCKETS = (64, 128, 256, 512, 1024, 2048)


def difference_hash(image: Image.Image) -> int:
    """64-bit dHash: is each pixel of the 9x8 grayscale thumbnail brighter than its right
    neighbour (robust to resizing, re-encoding and small colour changes)."""
    small = np.asarray(image.convert("L").resize((9, 8), Image.Resampling.LANCZOS), np.int16)
    bits = (small[:, 1:] > small[:, :-1]).ravel()
    return int(np.packbits(bits).view(">u8")[0])


@dataclass
class _Seen:
    """What one file is: its content hash, and (if it decodes) its size, mode and dHash."""

    sha256: str
    size: tuple[int, int] | None = None
    mode: str | None = None
    dhash: int | None = None
    error: str | None = None


def _look(path: str) -> _Seen:
    source: str | io.BytesIO = path
    try:
        if is_uri(path):  # a remote object: fetched once, hashed and decoded from memory
            source = io.BytesIO(read_bytes(path))
            seen = _Seen(hashlib.sha256(source.getvalue()).hexdigest())
        else:
            seen = _Seen(sha256_of(path))
    except OSError as error:
        return _Seen("", error=f"cannot read ({error.strerror or error})")
    try:
        with Image.open(source) as opened:  # one open: size and mode, then the decode
            seen.mode, seen.size = opened.mode, opened.size
            seen.dhash = difference_hash(decode_image(opened, min_size=(64, 64)))
    except ImageError as error:
        seen.error = error.reason
    except UnidentifiedImageError:
        seen.error = "not an image PIL can identify"  # as decode_image says it
    except Image.DecompressionBombError as error:
        seen.error = f"refused as a decompression bomb ({error})"
    except (OSError, SyntaxError, ValueError) as error:
        seen.error = f"cannot decode ({type(error).__name__}: {error})"
    return seen


@dataclass
class CheckReport:
    """Everything :func:`check_dataset` found (``to_dict`` for JSON)."""

    root: str
    split_source: str
    counts: dict[str, dict[str, int]]            # split -> class -> images
    imbalance: dict[str, float]                  # split -> largest / smallest class
    sizes: dict[str, int]                        # "<= 256 px" -> images (longer side)
    modes: dict[str, int]
    unreadable: list[dict[str, str]] = field(default_factory=list)
    exact_duplicates: list[dict[str, Any]] = field(default_factory=list)
    near_duplicates: list[dict[str, Any]] = field(default_factory=list)
    label_conflicts: list[dict[str, Any]] = field(default_factory=list)

    def _distinct(self, groups: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """``groups`` less the exact groups that a near group already holds (counted once)."""
        near = [{m["path"] for m in g["images"]} for g in self.near_duplicates]
        return [g for g in groups if g["kind"] == "near" or not any(
            {m["path"] for m in g["images"]} <= members for members in near)]

    @property
    def leaks(self) -> list[dict[str, Any]]:
        """Duplicate groups (exact or near) whose images sit in more than one split."""
        return self._distinct([g for g in self.exact_duplicates + self.near_duplicates
                               if g["across_splits"]])

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["summary"] = self.summary_counts()
        return data

    def summary_counts(self) -> dict[str, int]:
        return {
            "images": sum(sum(c.values()) for c in self.counts.values()),
            "unreadable": len(self.unreadable),
            "exact_duplicate_groups": len(self.exact_duplicates),
            "near_duplicate_groups": len(self.near_duplicates),
            "leaks_across_splits": len(self.leaks),
            "label_conflicts": len(self.label_conflicts),
        }


def _group(members: list[tuple[str, str, str]], kind: str) -> dict[str, Any]:
    """A duplicate group from (path, split, class) triples."""
    splits = sorted({split or "-" for _, split, _ in members})
    return {"kind": kind, "splits": splits, "across_splits": len(splits) > 1,
            "classes": sorted({label for _, _, label in members}),
            "images": [{"path": path, "split": split or "-", "class": label}
                       for path, split, label in members]}


def _member(sample: Sample) -> tuple[str, str, str]:
    return sample.relpath, sample.split, sample.label


def _near_pairs(hashes: list[int]) -> list[tuple[int, int]]:
    """Index pairs within NEAR_BITS bits: candidates share one of the bands exactly."""
    width = 64 // _BANDS + 1
    buckets: dict[tuple[int, int], list[int]] = defaultdict(list)
    for index, value in enumerate(hashes):
        for band in range(_BANDS):
            buckets[band, (value >> (band * width)) & ((1 << width) - 1)].append(index)
    pairs = set()
    for members in buckets.values():
        if len(members) < 2:
            continue
        for i, a in enumerate(members):
            for b in members[i + 1:]:
                if (hashes[a] ^ hashes[b]).bit_count() <= NEAR_BITS:
                    pairs.add((min(a, b), max(a, b)))
    return sorted(pairs)


def _components(n: int, pairs: list[tuple[int, int]]) -> list[list[int]]:
    parent = list(range(n))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for a, b in pairs:
        parent[find(a)] = find(b)
    groups: dict[int, list[int]] = defaultdict(list)
    for i in range(n):
        groups[find(i)].append(i)
    return [sorted(g) for g in groups.values() if len(g) > 1]


def check_dataset(dataset: ImageDataset, *, near: bool = True, workers: int | None = None,
                  progress: bool = True) -> CheckReport:
    """Check ``dataset`` (splits assigned): counts, sizes, unreadable files, duplicates, leaks
    and label conflicts."""
    from tqdm.auto import tqdm

    samples = dataset.samples
    workers = workers or min(8, available_cpus())
    with ThreadPoolExecutor(workers) as pool:
        seen = list(tqdm(pool.map(_look, [s.path for s in samples]), total=len(samples),
                         unit="img", desc="Checking images", disable=not progress, leave=False,
                         dynamic_ncols=True))
    counts: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    sizes: Counter = Counter()
    modes: Counter = Counter()
    report = CheckReport(root=str(dataset.root), split_source=dataset.split_source or "none",
                         counts={}, imbalance={}, sizes={}, modes={})
    for sample, info in zip(samples, seen):
        counts[sample.split or "all"][sample.label] += 1
        if info.error:
            report.unreadable.append({"path": sample.relpath, "reason": info.error})
            continue
        modes[info.mode] += 1
        side = max(info.size)
        bucket = next((b for b in _SIZE_BUCKETS if side <= b), None)
        sizes[f"<= {bucket} px" if bucket else f"> {_SIZE_BUCKETS[-1]} px"] += 1
    order = {"train": 0, "val": 1, "test": 2}
    report.counts = {split: dict(sorted(c.items()))
                     for split, c in sorted(counts.items(), key=lambda kv: order.get(kv[0], 3))}
    report.imbalance = {split: round(max(c.values()) / max(1, min(c.values())), 2)
                        for split, c in report.counts.items()}
    report.sizes = {f"<= {b} px": sizes[f"<= {b} px"] for b in _SIZE_BUCKETS
                    if sizes[f"<= {b} px"]}
    if sizes[f"> {_SIZE_BUCKETS[-1]} px"]:
        report.sizes[f"> {_SIZE_BUCKETS[-1]} px"] = sizes[f"> {_SIZE_BUCKETS[-1]} px"]
    report.modes = dict(modes.most_common())
    by_content: dict[str, list[int]] = defaultdict(list)
    for index, info in enumerate(seen):
        if info.sha256:
            by_content[info.sha256].append(index)
    exact = [sorted(g) for g in by_content.values() if len(g) > 1]
    report.exact_duplicates = [_group([_member(samples[i]) for i in g], "exact") for g in exact]
    conflicts = [g for g in report.exact_duplicates if len(g["classes"]) > 1]
    if near:
        readable = [i for i, info in enumerate(seen) if info.dhash is not None]
        pairs = _near_pairs([seen[i].dhash for i in readable])
        content = [seen[i].sha256 for i in readable]
        # near groups: linked images whose content is not all one exact group
        for group in _components(len(readable), pairs):
            if len({content[i] for i in group}) < 2:
                continue  # only exact copies: already listed
            members = [_member(samples[readable[i]]) for i in group]
            report.near_duplicates.append(_group(members, "near"))
        conflicts += [g for g in report.near_duplicates if len(g["classes"]) > 1]
    report.label_conflicts = report._distinct(conflicts)
    return report


def split_leaks(paths: Sequence[str], splits: Sequence[str], labels: Sequence[str],
                content_hashes: np.ndarray) -> dict[str, Any]:
    """The cheap check ``graft train`` runs: the same file content in two splits (a leak) or
    under two classes (a label conflict), from content hashes (0 = unreadable)."""
    where: dict[int, list[tuple[str, str, str]]] = defaultdict(list)
    for member, value in zip(zip(paths, splits, labels), content_hashes.tolist()):
        if value:
            where[value].append(member)
    leaks, conflicts = [], []
    for members in where.values():
        if len(members) < 2:
            continue
        group = _group(members, "exact")
        if group["across_splits"]:
            leaks.append(group)
        if len(group["classes"]) > 1:
            conflicts.append(group)
    return {"leaks_across_splits": leaks, "label_conflicts": conflicts}


_GROUPS_SHOWN = 50  # duplicate groups drawn with thumbnails on the page


def _thumbnail(path: str) -> str:
    import base64
    import io

    try:
        image = decode_image(path, min_size=(96, 96))
    except ImageError:
        return ""
    image.thumbnail((160, 96))
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=80)
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode()


def write_check_page(report: CheckReport, path: str | os.PathLike) -> Path:
    """``report`` as one self-contained HTML page (thumbnails inline), in the report's style."""
    import html

    root = report.root
    summary = report.summary_counts()
    cards = "".join(f'<div class="card"><div class="v">{v:,}</div><div class="k">'
                    f'{html.escape(k.replace("_", " "))}</div></div>' for k, v in summary.items())
    splits = list(report.counts)
    classes = sorted({c for counts in report.counts.values() for c in counts})
    count_rows = [[c, *(report.counts[s].get(c, 0) for s in splits)] for c in classes]
    count_rows.append(["imbalance (largest / smallest)", *(report.imbalance[s] for s in splits)])
    sections = [
        f"<h1>Data check: {html.escape(basename(root))}</h1>",
        (f'<p class="sub">{html.escape(root)} (splits: '
         f"{html.escape(report.split_source)})</p>"),
        f'<div class="cards">{cards}</div>',
        "<h2>Images per class</h2>", table(["class", *splits], count_rows),
        "<h2>Sizes and modes</h2>",
        '<div class="row">' + table(["longer side", "images"], list(report.sizes.items()))
        + table(["mode", "images"], list(report.modes.items())) + "</div>",
    ]

    def groups(title: str, items: list[dict[str, Any]], note: str) -> None:
        sections.append(f"<h2>{html.escape(title)} ({len(items)})</h2>")
        sections.append(f'<p class="sub">{html.escape(note)}</p>')
        for group in items[:_GROUPS_SHOWN]:
            figures = "".join(
                f'<figure><img src="{_thumbnail(join(root, m["path"]))}" alt=""><figcaption>'
                f'{html.escape(m["split"])} / {html.escape(m["class"])}<br>'
                f'{html.escape(m["path"])}</figcaption></figure>' for m in group["images"])
            sections.append(f'<div class="thumbs">{figures}</div>')
        if len(items) > _GROUPS_SHOWN:
            sections.append(f'<p class="sub">... and {len(items) - _GROUPS_SHOWN} more (all in '
                            f"--json).</p>")

    groups("Leaks across splits", report.leaks,
           "The same image (exact or near copy) in more than one split: the test score counts "
           "images the model trained on. Keep each group in one split.")
    groups("Label conflicts", report.label_conflicts,
           "The same image under more than one class.")
    groups("Duplicates within a split", [g for g in report.exact_duplicates +
                                         report.near_duplicates if not g["across_splits"]],
           "Repeated images: they weigh double in training or scoring.")
    if report.unreadable:
        sections += ["<h2>Unreadable files</h2>",
                     table(["file", "reason"], [[u["path"], u["reason"]]
                                                for u in report.unreadable], left=2)]
    page = (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>Data check: '
            f"{html.escape(basename(root))} - graft</title><style>{CSS}</style></head><body><main>"
            f"{''.join(sections)}</main></body></html>\n")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(page, encoding="utf-8")
    return path
