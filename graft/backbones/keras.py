"""Reading Keras ``.h5`` application weights (the format the Keras tutorials save and share)."""

from __future__ import annotations

import os
from pathlib import Path

import h5py
import numpy as np
import torch

from graft.errors import WeightsError

__all__ = ["keras_conv", "keras_dense", "read_keras_h5"]


def read_keras_h5(path: str | os.PathLike) -> dict[str, list[np.ndarray]]:
    """``{layer name: [weights in Keras order]}`` from a Keras weights file (no code is run)."""
    path = Path(path)
    try:
        handle = h5py.File(path, "r")
    except OSError as exc:
        raise WeightsError(f"{path} is not a readable HDF5 (Keras .h5) file ({exc}).") from exc
    with handle:
        root = handle["model_weights"] if "model_weights" in handle else handle
        if "layer_names" not in root.attrs:
            raise WeightsError(
                f"{path} is HDF5 but not a Keras weights file (no 'layer_names'). Expected the "
                f"file Keras writes with model.save_weights('x.h5')."
            )
        layers: dict[str, list[np.ndarray]] = {}
        for raw in root.attrs["layer_names"]:
            name = raw.decode() if isinstance(raw, bytes) else str(raw)
            group = root[name]
            names = [n.decode() if isinstance(n, bytes) else str(n)
                     for n in group.attrs.get("weight_names", [])]
            if names:
                layers[name] = [np.asarray(group[n]) for n in names]
    return layers


def keras_conv(weights: list[np.ndarray]) -> tuple[torch.Tensor, torch.Tensor]:
    """A Keras Conv2D (kernel HWIO, bias) as PyTorch (weight OIHW, bias)."""
    kernel, bias = weights
    return (torch.from_numpy(np.ascontiguousarray(kernel.transpose(3, 2, 0, 1))),
            torch.from_numpy(np.asarray(bias)))


def keras_dense(weights: list[np.ndarray]) -> tuple[torch.Tensor, torch.Tensor]:
    """A Keras Dense (kernel IO, bias) as PyTorch Linear (weight OI, bias)."""
    kernel, bias = weights
    return torch.from_numpy(np.ascontiguousarray(kernel.T)), torch.from_numpy(np.asarray(bias))
