"""End-to-end feature extraction speed: graft vs a plain PyTorch eager loop, same images, same model.

Each phase runs in its own process so its peak memory (max RSS) is its own:

  torch   PIL decode + timm/torchvision transforms + eager forward, batch 32 (the tutorial loop)
  graft   graft's extraction into an empty cache (ONNX Runtime, threaded decode)
  warm    the same extraction again: everything comes from the cache
  int8    graft's extraction with --precision int8 (quantized once, calibrated on 200 of the
          photos, before the timing starts), into an empty cache

Usage: python benchmarks/extract_speed.py [--images 544] [--backbone tf_efficientnet_lite0]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SHARED = Path(os.environ.get("GRAFT_SHARED", Path(__file__).resolve().parents[2] / "shared"))


def _images(n: int) -> list[Path]:
    """``n`` real photos from flowers17, the same number from each class."""
    root = SHARED / "datasets" / "flowers17"
    classes = sorted(p for p in root.iterdir() if p.is_dir())
    per_class = -(-n // len(classes))
    files = [f for c in classes for f in sorted(c.glob("*.jpg"))[:per_class]]
    return files[:n]


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def phase_torch(files: list[Path], backbone: str, weights: str | None) -> dict:
    import torch
    from PIL import Image
    from timm.data import create_transform, resolve_data_config

    from graft.backbones import create_backbone

    net = create_backbone(backbone, weights=weights)  # same weights, same cut (pre-logits pool)
    transform = create_transform(**resolve_data_config({}, model=net.model))
    start = time.perf_counter()
    with torch.no_grad():
        for i in range(0, len(files), 32):
            batch = torch.stack([transform(Image.open(f).convert("RGB")) for f in files[i:i + 32]])
            net(batch)
    seconds = time.perf_counter() - start
    return {"seconds": seconds, "img_per_s": len(files) / seconds, "peak_mb": _peak_mb()}


def _extract(files: list[Path], backbone: str, weights: str | None, cache: str,
             precision: str = "fp32") -> dict:
    from graft.backbones import create_backbone
    from graft.data import ImageDataset, Sample, assign_splits
    from graft.features import create_engine, extract_feature_set

    samples = [Sample(path=str(f), relpath=f"{f.parent.name}/{f.name}", label=f.parent.name) for f in files]
    dataset = assign_splits(ImageDataset(root=files[0].parents[1], samples=samples,
                                         classes=sorted({s.label for s in samples}),
                                         layout="folders"))
    t0 = time.perf_counter()
    net = create_backbone(backbone, weights=weights)
    engine = create_engine(net, device="cpu", cache_dir=cache)
    if precision == "int8":
        from graft.features.quantize import calibration_images, quantize_engine

        engine = quantize_engine(engine, calibration_images(files), cache_dir=cache)
    setup = time.perf_counter() - t0
    _, report = extract_feature_set(dataset, engine, net.config(), cache_dir=cache, progress=False)
    return {"setup_seconds": setup, "seconds": report.seconds, "computed": report.n_computed,
            "cached": report.n_cached,
            "img_per_s": len(files) / report.seconds if report.seconds else 0.0,
            "peak_mb": _peak_mb()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=544)
    parser.add_argument("--backbone", default="tf_efficientnet_lite0")
    parser.add_argument("--weights", default=None)
    parser.add_argument("--phase", choices=("torch", "graft", "warm", "int8"),
                        help=argparse.SUPPRESS)
    parser.add_argument("--cache", help=argparse.SUPPRESS)
    args = parser.parse_args()
    files = _images(args.images)
    if args.phase == "torch":
        print(json.dumps(phase_torch(files, args.backbone, args.weights)))
        return
    if args.phase in ("graft", "warm", "int8"):
        precision = "int8" if args.phase == "int8" else "fp32"
        print(json.dumps(_extract(files, args.backbone, args.weights, args.cache, precision)))
        return

    def run(phase: str, cache: str = "") -> dict:
        cmd = [sys.executable, __file__, "--phase", phase, "--images", str(args.images),
               "--backbone", args.backbone, "--cache", cache]
        if args.weights:
            cmd += ["--weights", args.weights]
        out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
        return json.loads(out.strip().splitlines()[-1])

    with tempfile.TemporaryDirectory() as cache:
        torch_r = run("torch")
        graft_r = run("graft", cache)
        warm_r = run("warm", cache)
    with tempfile.TemporaryDirectory() as cache:
        int8_r = run("int8", cache)
    print(f"{len(files)} flowers17 photos, backbone {args.backbone}, {os.cpu_count()} CPU cores\n")
    print(f"{'':28}{'img/s':>10}{'seconds':>10}{'peak MB':>10}")
    print(f"{'PyTorch eager loop':28}{torch_r['img_per_s']:10.1f}{torch_r['seconds']:10.1f}"
          f"{torch_r['peak_mb']:10.0f}")
    print(f"{'graft (empty cache)':28}{graft_r['img_per_s']:10.1f}{graft_r['seconds']:10.1f}"
          f"{graft_r['peak_mb']:10.0f}")
    print(f"{'graft (warm cache re-run)':28}{warm_r['img_per_s']:10.0f}{warm_r['seconds']:10.2f}"
          f"{warm_r['peak_mb']:10.0f}")
    print(f"{'graft int8 (empty cache)':28}{int8_r['img_per_s']:10.1f}{int8_r['seconds']:10.1f}"
          f"{int8_r['peak_mb']:10.0f}")
    print(f"\ngraft speed-up over the eager loop: {graft_r['img_per_s'] / torch_r['img_per_s']:.2f}x"
          f"  (one-time ONNX export + model load: {graft_r['setup_seconds']:.1f}s, cached after)")
    print(f"warm re-run: {warm_r['computed']} images extracted, {warm_r['cached']} from cache")


if __name__ == "__main__":
    main()
