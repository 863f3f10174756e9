"""Whole-process extraction of all 1,360 flowers17 photos: `graft extract` vs a plain PyTorch loop.

Both are timed as whole processes (interpreter start, imports, model load, every image), as a user
waits for them:
  torch   python -c "<PIL decode + timm transforms + eager forward, batch 32>"
  graft   graft extract flowers17 --out F.h5, with an empty feature cache but the backbone's ONNX
          graph already exported (as after any earlier graft run with that backbone)

Usage: python benchmarks/extract_process.py
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SHARED = Path(os.environ.get("GRAFT_SHARED", Path(__file__).resolve().parents[2] / "shared"))

TORCH_LOOP = """
import sys
from pathlib import Path
import torch
from PIL import Image
from timm.data import create_transform, resolve_data_config
from graft.backbones import create_backbone
files = sorted(Path(sys.argv[1]).glob("*/*.jpg"))
net = create_backbone("tf_efficientnet_lite0")
transform = create_transform(**resolve_data_config({}, model=net.model))
with torch.no_grad():
    for i in range(0, len(files), 32):
        net(torch.stack([transform(Image.open(f).convert("RGB")) for f in files[i:i + 32]]))
print(len(files))
"""


def _timed(command: list[str], env: dict[str, str]) -> float:
    start = time.perf_counter()
    subprocess.run(command, check=True, capture_output=True, env=env)
    return time.perf_counter() - start


def main() -> None:
    data = SHARED / "datasets" / "flowers17"
    n = len(list(data.glob("*/*.jpg")))
    graft_cmd = shutil.which("graft") or f"{sys.executable} -m graft"
    with tempfile.TemporaryDirectory() as tmp:
        env = {**os.environ, "GRAFT_CACHE_DIR": str(Path(tmp) / "cache")}
        few = Path(tmp) / "few"
        for name in ("daisy", "iris"):
            (few / name).mkdir(parents=True)
            for f in sorted((data / name).glob("*.jpg"))[:2]:
                shutil.copy(f, few / name)
        # Export the graph once (any earlier run does this), then empty the feature cache.
        subprocess.run([*graft_cmd.split(), "extract", str(few), "--out",
                        str(Path(tmp) / "few.h5"), "-q"], check=True, env=env)
        shutil.rmtree(Path(tmp) / "cache" / "features")
        graft_s = _timed([*graft_cmd.split(), "extract", str(data), "--out",
                          str(Path(tmp) / "f.h5"), "-q"], env)
        warm_s = _timed([*graft_cmd.split(), "extract", str(few), "--out",
                         str(Path(tmp) / "few.h5"), "-q"], env)
        torch_s = _timed([sys.executable, "-c", TORCH_LOOP, str(data)], env)
    print(f"{n} flowers17 photos, EfficientNet-Lite0, {os.cpu_count()} CPU cores, whole processes\n")
    print(f"{'plain PyTorch loop':34}{torch_s:8.1f} s{n / torch_s:9.1f} img/s")
    print(f"{'graft extract (empty feature cache)':34}{graft_s:8.1f} s{n / graft_s:9.1f} img/s")
    print(f"{'graft extract, 4 cached images':34}{warm_s:8.2f} s  (fixed overhead)")
    print(f"\ngraft speed-up over the plain loop, whole process: {torch_s / graft_s:.2f}x")


if __name__ == "__main__":
    main()
