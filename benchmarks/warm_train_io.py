"""Bytes a warm `graft train` reads, against the size of the dataset it trains on.

Every feature is cached first (one run, not counted); each counted run is a whole `graft train`
process whose ``rchar`` (``/proc/self/io``: every byte read through a system call, page-cache hits
included) is read as it exits. The dataset's size is printed beside it: a warm run that hashed
every image again would read at least that much. What a warm run does read: Python's imports, the
feature cache, the model it writes and scores, and the few test images of its end-to-end check.

Usage: python benchmarks/warm_train_io.py DATA [--runs 2] [--cache-dir DIR]
(``DATA``: e.g. the 10,000 images ``benchmarks/scale_memory.py --keep DIR`` generates.)
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# graft train, then this process's own read counter, on stderr
RUN = """
import sys
from graft.cli.main import main
code = main(sys.argv[1:])
io = dict(line.split(": ") for line in open("/proc/self/io").read().splitlines())
print(f"RCHAR {io['rchar']}", file=sys.stderr)
sys.exit(code)
"""


def _size(folder: Path) -> tuple[int, int]:
    files = [p for p in folder.rglob("*") if p.is_file()]
    return len(files), sum(p.stat().st_size for p in files)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data", type=Path)
    parser.add_argument("--runs", type=int, default=2)
    parser.add_argument("--cache-dir", default=None, help="the feature cache (default: graft's)")
    args = parser.parse_args()
    env = dict(os.environ)
    if args.cache_dir:
        env["GRAFT_CACHE_DIR"] = args.cache_dir
    count, size = _size(args.data)
    print(f"{args.data}: {count} files, {size / 1e6:.1f} MB")
    with tempfile.TemporaryDirectory() as tmp:
        for run in range(args.runs + 1):
            start = time.perf_counter()
            done = subprocess.run([sys.executable, "-c", RUN, "train", str(args.data), "--out",
                                   str(Path(tmp) / "model"), "-q"], env=env, text=True,
                                  capture_output=True, check=False)
            seconds = time.perf_counter() - start
            if done.returncode != 0:
                raise SystemExit(done.stderr[-3000:])
            rchar = int(re.search(r"RCHAR (\d+)", done.stderr).group(1))
            label = "filling the cache" if run == 0 else f"warm run {run}"
            print(f"  {label:<18} {seconds:7.1f} s   read {rchar / 1e6:9.1f} MB "
                  f"({rchar / size:.2f}x the dataset)")


if __name__ == "__main__":
    main()
