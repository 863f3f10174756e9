"""Frozen features + logreg vs fine-tuning (stage 1 and stage 2), MobileNetV2 on hymenoptera.

Uses the torchvision MobileNetV2 ImageNet weights in ../shared/weights and hymenoptera's own
train/val split (val = the held-out test; fine-tuning sets aside 10 % of train for validation).
Fine-tuning runs the Keras tutorial's recipe: 10 epochs with the base frozen (lr 1e-3), then 10
with the top 2 blocks unfrozen (lr 1e-5), augmentation flip/rotate/crop, early stopping (patience 3).

Usage: python benchmarks/finetune_hymenoptera.py [--device auto]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

from graft.finetune import FinetuneConfig, finetune
from graft.workflows import train

SHARED = Path(os.environ.get("GRAFT_SHARED", Path(__file__).resolve().parents[2] / "shared"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()
    data = SHARED / "datasets" / "hymenoptera"
    weights = str(SHARED / "weights" / "mobilenet_v2-b0353104.pth")
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        frozen = train(data, out=Path(tmp) / "logreg", backbone="mobilenetv2_100",
                       weights=weights, cache_dir=Path(tmp) / "cache", progress=False,
                       device=args.device)
        frozen_seconds = time.perf_counter() - start
        config = FinetuneConfig(backbone="mobilenetv2_100", weights=weights, device=args.device)
        tuned = finetune(data, out=Path(tmp) / "finetuned", config=config,
                         cache_dir=Path(tmp) / "cache", progress=False)
    m = tuned.metrics
    epochs = {str(s): sum(1 for h in tuned.history if h["stage"] == s) for s in (1, 2)}
    print(f"hymenoptera, MobileNetV2 (ImageNet, torchvision weights), test = val/ (153 images), "
          f"device {args.device}\n")
    print(f"{'method':<44}{'test acc':>9}{'s/epoch':>9}{'epochs':>8}")
    print(f"{'frozen features + logreg (graft train)':<44}{frozen.metrics['accuracy']:>9.3f}"
          f"{'-':>9}{'-':>8}   ({frozen_seconds:.0f}s in all)")
    print(f"{'finetune stage 1 (base frozen, lr 1e-3)':<44}{m['stage_test_accuracy']['1']:>9.3f}"
          f"{m['seconds_per_epoch']['1']:>9.1f}{epochs['1']:>8}")
    if "2" in m["stage_test_accuracy"]:
        print(f"{'finetune stage 2 (top 2 blocks, lr 1e-5)':<44}"
              f"{m['stage_test_accuracy']['2']:>9.3f}{m['seconds_per_epoch']['2']:>9.1f}"
              f"{epochs['2']:>8}")
    print(f"{'finetune, final model (best val loss)':<44}{m['accuracy']:>9.3f}")


if __name__ == "__main__":
    main()
