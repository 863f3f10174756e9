"""Fusing several backbones' features into one vector."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = ["FUSION", "fuse_features"]

FUSION = "per-backbone unit RMS, concatenated"


def fuse_features(blocks: Sequence[np.ndarray]) -> np.ndarray:
    """The backbones' (N, D_i) features side by side, as the heads see them.

    One backbone's features pass unchanged. Fused backbones are each rescaled per image to unit
    root-mean-square (L2 norm sqrt(D_i)) first: their raw scales differ several-fold (SqueezeNet's
    Caffe-style features are ~6x EfficientNet's), and unscaled, the largest drowns the others in
    a linear head (the fused row of ``benchmarks/backbone_zoo.py``). Stateless, so cached features
    stay per backbone and prediction applies exactly the same rule.
    """
    blocks = [np.asarray(block, dtype=np.float32) for block in blocks]
    if len(blocks) == 1:
        return blocks[0]
    scaled = []
    for block in blocks:
        norms = np.linalg.norm(block, axis=1, keepdims=True)
        scaled.append(block * (np.sqrt(block.shape[1]) / np.maximum(norms, 1e-12)))
    return np.hstack(scaled).astype(np.float32, copy=False)
