"""Peak memory and throughput of listing, extract, train, evaluate and predict as images grow.

Synthetic JPEGs of varied sizes (48-480 px a side, 10 classes of noisy colour fields close
enough that the head has work to do) are generated on the fly into a temporary folder (nothing is
committed); each command then runs as its own process under /usr/bin/time, which reports its
peak RSS. The default backbone (EfficientNet-Lite0) and head (logreg) throughout, and with
``--out-of-core`` also ``graft train --out-of-core`` (the ``train-ooc`` row: the head fitted from
the cache a chunk at a time); the feature cache starts empty for each size. The ``list`` row is
graft's listing and split of the folder alone, twice: streamed, as ``graft extract``, ``train``
and ``evaluate`` read it (the most memory it takes at any time), and held whole, as
``graft finetune``, a CSV and remote storage keep it (tracemalloc). The ``extract-py`` row runs
``graft extract`` again (the features now cached: listing, cache lookups and writing the file)
in a process that traces Python's allocations, and gives their peak. The ``evaluate`` row scores
the trained model on every image (``--split all``; the features cached by then).

Usage: python benchmarks/scale_memory.py [--sizes 10000,100000] [--keep DIR] [--out-of-core]
       [--steps list,extract,extract-py,train,evaluate,predict]
With --keep, a folder kept from an earlier run (the same images: generation is deterministic) and
its cache are reused, so ``--keep DIR --steps train`` times training alone.
A million images: python benchmarks/scale_memory.py --sizes 1000000 (about 3 hours of
extraction and as much of prediction on 2 CPU cores, and about 15 GB of disk for the JPEGs).
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from multiprocessing import Pool
from pathlib import Path

CLASSES = 10
# The `list` step: graft's listing and split of the folder, streamed (what `graft extract` does:
# the most memory it takes at any time, traced) and held whole (what `graft train` keeps).
LIST = """
import sys, tracemalloc
from graft.data import assign_splits, scan_dataset
from graft.data.dataset import stream_dataset
tracemalloc.start()
count = sum(1 for _ in stream_dataset(sys.argv[1]))
streamed = tracemalloc.get_traced_memory()[1]
tracemalloc.stop()
tracemalloc.start()
dataset = assign_splits(scan_dataset(sys.argv[1]))
held, _ = tracemalloc.get_traced_memory()
assert count == len(dataset.samples)
print(f"STREAMED {streamed / 1e6:.2f} HELD {held / 1e6:.1f}", file=sys.stderr)
"""
# The `extract-py` step: `graft extract` again, in a process tracing Python's allocations: the
# most memory Python objects take at any time (RSS also counts SQLite's and HDF5's caches).
EXTRACT_TRACED = """
import sys, tracemalloc
from graft.cli.main import main
tracemalloc.start()
code = main(sys.argv[1:])
print(f"TRACED {tracemalloc.get_traced_memory()[1] / 1e6:.1f}", file=sys.stderr)
sys.exit(code)
"""


def _make(args: tuple[Path, int]) -> None:
    import numpy as np
    from PIL import Image

    root, index = args
    rng = np.random.default_rng(index)
    label = index % CLASSES
    width, height = (int(v) for v in rng.integers(48, 481, 2))
    # close colours under heavy noise: classes a head must work to separate
    hue = np.array([110 + 4 * label, 128 - 3 * label, 120 + 2 * (label % 3)], np.float32)
    pixels = hue + rng.normal(0, 70, (height, width, 3))
    folder = root / f"class{label:02d}"
    Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(
        folder / f"img{index:07d}.jpg", quality=85)


def generate(root: Path, count: int) -> float:
    for label in range(CLASSES):
        (root / f"class{label:02d}").mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    with Pool(os.cpu_count()) as pool:
        for _ in pool.imap_unordered(_make, ((root, i) for i in range(count)), chunksize=256):
            pass
    return time.perf_counter() - start


def timed(command: list[str], env: dict[str, str]) -> tuple[float, float, str]:
    """(seconds, peak RSS in MB, stderr) of one command as its own process."""
    start = time.perf_counter()
    result = subprocess.run(["/usr/bin/time", "-f", "PEAK_KB %M", *command], env=env,
                            capture_output=True, text=True, check=False)
    seconds = time.perf_counter() - start
    if result.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed:\n{result.stderr[-3000:]}")
    peak = int(re.search(r"PEAK_KB (\d+)", result.stderr).group(1)) / 1024
    return seconds, peak, result.stderr


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="10000,100000")
    parser.add_argument("--keep", default=None, help="generate into (and keep) this folder")
    parser.add_argument("--out-of-core", action="store_true",
                        help="also time 'graft train --out-of-core' (the train-ooc row)")
    parser.add_argument("--steps", default="list,extract,extract-py,train,evaluate,predict",
                        help="the steps to time (train-ooc comes with --out-of-core)")
    args = parser.parse_args()
    graft = [sys.executable, "-m", "graft"]
    print(f"{'images':>8} {'step':<9}{'seconds':>9}{'img/s':>9}{'peak RSS MB':>13}")
    for size in (int(s) for s in args.sizes.split(",")):
        work = Path(args.keep or tempfile.mkdtemp(prefix="graft-scale-")) / f"n{size}"
        try:
            data = work / "data"
            kept = args.keep and data.is_dir() and sum(1 for _ in data.rglob("*.jpg")) == size
            made = 0.0 if kept else generate(data, size)
            env = {**os.environ, "GRAFT_CACHE_DIR": str(work / "cache")}
            # the exported graph is copied in: timing the network, not the one-time export
            onnx = Path(os.environ.get("GRAFT_CACHE_DIR", Path.home() / ".cache" / "graft"))
            if (onnx / "onnx").is_dir():
                shutil.copytree(onnx / "onnx", work / "cache" / "onnx", dirs_exist_ok=True)
            if not kept:
                print(f"{size:>8} {'generate':<9}{made:>9.1f}{size / made:>9.1f}{'':>13}",
                      flush=True)
            rows = [
                ("list", [sys.executable, "-c", LIST, str(data)]),
                ("extract", [*graft, "extract", str(data), "--out", str(work / "f.h5"), "-q"]),
                ("extract-py", [sys.executable, "-c", EXTRACT_TRACED, "extract", str(data),
                                "--out", str(work / "f.h5"), "-q"]),
                ("train", [*graft, "train", str(data), "--out", str(work / "model"), "-q"]),
                ("evaluate", [*graft, "evaluate", str(work / "model"), str(data), "--split",
                              "all", "-q"]),
                ("predict", [*graft, "predict", str(work / "model"), str(data), "--csv",
                             str(work / "p.csv"), "-q"]),
            ]
            if args.out_of_core:
                rows.insert(2, ("train-ooc", [*graft, "train", str(data), "--out",
                                              str(work / "model-ooc"), "--out-of-core", "-q"]))
            steps = set(args.steps.split(",")) | ({"train-ooc"} if args.out_of_core else set())
            for step, command in (row for row in rows if row[0] in steps):
                seconds, peak, output = timed(command, env)
                rate = f"{size / seconds:9.1f}" if not step.startswith("train") else f"{'':>9}"
                note = ""
                if step == "list":
                    streamed, held = re.search(r"STREAMED ([\d.]+) HELD ([\d.]+)",
                                               output).groups()
                    note = (f"   (streamed, the listing peaks at {streamed} MB; held whole, it "
                            f"keeps {held} MB)")
                if step == "extract-py":
                    traced = re.search(r"TRACED ([\d.]+)", output).group(1)
                    note = f"   (Python objects peak at {traced} MB)"
                if step.startswith("train"):
                    import json

                    model = work / ("model" if step == "train" else "model-ooc")
                    metrics = json.loads((model / "metrics.json").read_text())
                    note = (f"   (head fit {metrics['head_fit_seconds']:.1f} s on "
                            f"{metrics['n_train']:,} images, test accuracy "
                            f"{metrics['accuracy']:.3f})")
                print(f"{size:>8} {step:<9}{seconds:>9.1f}{rate}{peak:>13.0f}{note}", flush=True)
        finally:
            if not args.keep:
                shutil.rmtree(work.parent, ignore_errors=True)


if __name__ == "__main__":
    main()
