"""Fit time and held-out accuracy of every head on cached features.

Datasets (features of the default backbone, EfficientNet-Lite0, 1280-d):
  flowers17     ../shared flowers17, graft's hash split (20 % test)
  hymenoptera   ../shared hymenoptera, its val folder as the test
  synth-102     2,040 train + 1,020 test rows, 102 classes, made from real flowers17 features:
                each class is one real image's features plus 1.5 times another real image's
                deviation from the mean (realistic correlations, overlapping classes), the size
                of Oxford Flowers-102's training split
  synth-102-L   3,060 train rows, 102 classes (Caltech-101-sized), same recipe
  synth-5       4,000 train rows, 5 classes, same recipe
  synth-100k    100,000 train rows, 10 classes, spread 3 (not run by default: the scale case)
  synth-100k-hard  the same with spread 6 (classes far harder to separate)

Usage: python benchmarks/head_speed.py [--heads logreg,svm,...] [--datasets flowers17,...]
       [--before]   (fit with library-default thread pools, as graft did before fit_head)
Features are extracted once into benchmarks/results/cache (ignored by git).
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import numpy as np

SHARED = Path(os.environ.get("GRAFT_SHARED", Path(__file__).resolve().parents[2] / "shared"))
CACHE = Path(__file__).resolve().parent / "results" / "cache"


def _features(name: str):
    from graft.backbones import create_backbone
    from graft.data import assign_splits, scan_dataset
    from graft.features import create_engine, extract_feature_set

    dataset = assign_splits(scan_dataset(SHARED / "datasets" / name))
    net = create_backbone("tf_efficientnet_lite0", cache_dir=CACHE)
    engine = create_engine(net, device="cpu", cache_dir=CACHE)
    features, _ = extract_feature_set(dataset, engine, [net.config()], cache_dir=CACHE,
                                      progress=False)
    X_train, y_train = features.subset("train")
    X_test, y_test = features.subset("test")
    return X_train, y_train, X_test, y_test


def _synthetic(real: np.ndarray, n_classes: int, n_train: int, n_test: int, seed: int = 0,
               spread: float = 1.5):
    """Class k is one real image's features plus ``spread`` times another real image's deviation
    from the mean: the noise has real features' correlations, so the classes overlap the way
    real fine-grained classes do (not the easy isotropic noise of random data)."""
    rng = np.random.default_rng(seed)
    prototypes = real[rng.choice(len(real), n_classes, replace=False)]
    deviations = real - real.mean(axis=0, keepdims=True)

    def draw(n: int):
        y = np.arange(n) % n_classes
        X = prototypes[y] + spread * deviations[rng.integers(0, len(real), n)]
        return np.maximum(X, 0).astype(np.float32), y  # pooled ReLU features are >= 0

    return (*draw(n_train), *draw(n_test))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--heads", default="logreg,linear-svm,svm,knn,softmax,naive-bayes")
    parser.add_argument("--datasets", default="flowers17,hymenoptera,synth-102,synth-102-L,synth-5")
    parser.add_argument("--before", action="store_true",
                        help="fit as graft did before fit_head: library-default thread pools")
    args = parser.parse_args()
    from graft.heads import create_head, fit_head

    data = {}
    wanted = args.datasets.split(",")
    flowers = _features("flowers17")
    if "flowers17" in wanted:
        data["flowers17"] = flowers
    if "hymenoptera" in wanted:
        data["hymenoptera"] = _features("hymenoptera")
    real = np.vstack([flowers[0], flowers[2]])
    for name, classes, n_train, spread in (
            ("synth-102", 102, 2040, 1.5), ("synth-102-L", 102, 3060, 1.5),
            ("synth-5", 5, 4000, 1.5), ("synth-100k", 10, 100_000, 3.0),
            ("synth-100k-hard", 10, 100_000, 6.0)):
        if name in wanted:
            data[name] = _synthetic(real, classes, n_train, min(n_train // 2, 5000),
                                    spread=spread)
    print(f"{'head':<14}{'dataset':<14}{'train':>7}{'classes':>8}{'fit s':>9}{'test acc':>10}")
    for head in args.heads.split(","):
        for name, (X_train, y_train, X_test, y_test) in data.items():
            estimator = create_head(head, random_state=0, y=y_train)
            if args.before:
                start = time.perf_counter()
                estimator.fit(X_train, y_train)
                seconds = time.perf_counter() - start
            else:
                estimator, seconds = fit_head(estimator, X_train, y_train)
            accuracy = float(np.mean(estimator.predict(X_test) == y_test))
            print(f"{head:<14}{name:<14}{len(y_train):>7}{len(np.unique(y_train)):>8}"
                  f"{seconds:>9.2f}{accuracy:>10.3f}", flush=True)


if __name__ == "__main__":
    main()
