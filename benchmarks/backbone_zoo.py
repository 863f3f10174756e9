"""Backbones with real offline weights: test accuracy (logreg head) and extraction speed.

For each backbone (and their fusion): ``graft train`` on flowers17 (hash split, 20 % test) and
hymenoptera (its own train/val split), each row with an empty cache so img/s is the cold
extraction rate over both datasets (1,758 photos) on this machine.

Usage: python benchmarks/backbone_zoo.py [--only TEXT[,TEXT...]]  (rows whose label has one)
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from pathlib import Path

from graft.workflows import train

SHARED = Path(os.environ.get("GRAFT_SHARED", Path(__file__).resolve().parents[2] / "shared"))
WEIGHTS = SHARED / "weights"

ROWS = [
    ("EfficientNet-Lite0 (pip)", ["tf_efficientnet_lite0"], None),
    ("EfficientNet-Lite1 (pip)", ["tf_efficientnet_lite1"], None),
    ("EfficientNet-Lite2 (pip)", ["tf_efficientnet_lite2"], None),
    ("Lite0 + Lite2", ["tf_efficientnet_lite0", "tf_efficientnet_lite2"], None),
    ("Lite0, --tta flip", ["tf_efficientnet_lite0"], None, {"tta": "flip"}),
    ("Lite2, --tta flip", ["tf_efficientnet_lite2"], None, {"tta": "flip"}),
    ("MobileNetV2 (torchvision .pth)", ["mobilenetv2_100"],
     [str(WEIGHTS / "mobilenet_v2-b0353104.pth")]),
    ("SqueezeNet 1.1 (Keras .h5)", ["squeezenet1_1"],
     [str(WEIGHTS / "squeezenet_weights_tf_dim_ordering_tf_kernels.h5")]),
    ("Lite0 + MobileNetV2 + SqueezeNet", ["tf_efficientnet_lite0", "mobilenetv2_100",
                                          "squeezenet1_1"],
     [f"mobilenetv2_100={WEIGHTS / 'mobilenet_v2-b0353104.pth'}",
      f"squeezenet1_1={WEIGHTS / 'squeezenet_weights_tf_dim_ordering_tf_kernels.h5'}"]),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", default="", help="comma-separated parts of row labels")
    wanted = [part for part in parser.parse_args().only.split(",") if part]
    print(f"{'backbone':<34}{'dim':>6}{'flowers17':>11}{'hymenoptera':>13}{'img/s':>8}")
    for label, backbones, weights, *options in ROWS:
        if wanted and not any(part in label for part in wanted):
            continue
        extra = options[0] if options else {}
        accuracies, computed, seconds = [], 0, 0.0
        with tempfile.TemporaryDirectory() as cache, tempfile.TemporaryDirectory() as out:
            for dataset in ("flowers17", "hymenoptera"):
                result = train(SHARED / "datasets" / dataset, out=Path(out) / dataset,
                               backbone=backbones, weights=weights, cache_dir=cache,
                               progress=False, **extra)
                accuracies.append(result.metrics["accuracy"])
                computed += result.extraction.n_computed
                seconds += result.extraction.seconds
            config = json.loads((Path(out) / "flowers17" / "graft.json").read_text())
            dim = sum(b["num_features"] for b in config["backbones"])
        print(f"{label:<34}{dim:>6}{accuracies[0]:>11.3f}{accuracies[1]:>13.3f}"
              f"{computed / seconds:>8.1f}", flush=True)


if __name__ == "__main__":
    main()
