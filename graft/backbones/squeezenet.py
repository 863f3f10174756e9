"""SqueezeNet 1.1 with timm's interface, loadable from the Keras application weights.

timm has no SqueezeNet; torchvision's ``squeezenet1_1`` has the same layers as the Keras model
(keras-squeezenet), except that Keras max-pools round down (``ceil_mode=False``), which changes
the feature map sizes at 227 px. The adapter gives it ``forward_features``, ``forward_head``,
``feature_info`` and ``forward_intermediates`` so it is a backbone like any other.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from graft.backbones.keras import keras_conv
from graft.errors import WeightsError

__all__ = ["SqueezeNet11", "squeezenet_from_keras"]

# Keras layer names of the fire modules, and their index in torchvision's ``features``.
_FIRES = {"fire2": 3, "fire3": 4, "fire4": 6, "fire5": 7, "fire6": 9, "fire7": 10, "fire8": 11,
          "fire9": 12}


class SqueezeNet11(nn.Module):
    """SqueezeNet 1.1 (Iandola et al.), 512-d pooled features, 1000 ImageNet logits."""

    num_features = 512

    def __init__(self, num_classes: int = 1000) -> None:
        super().__init__()
        from torchvision.models import squeezenet1_1

        net = squeezenet1_1(weights=None, num_classes=num_classes)
        for module in net.features:
            if isinstance(module, nn.MaxPool2d):
                module.ceil_mode = False  # Keras MaxPooling2D('valid') rounds down
        self.features = net.features
        self.classifier = net.classifier  # dropout, conv10, relu, global average pool
        self.feature_info = [
            {"module": name, "num_chs": net.features[index].expand1x1.out_channels * 2,
             "reduction": 0}
            for name, index in _FIRES.items()
        ]

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        if pre_logits:
            return x.mean(dim=(2, 3))
        return self.classifier(x).flatten(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def forward_intermediates(self, x: torch.Tensor, indices: list[int],
                              intermediates_only: bool = True) -> list[torch.Tensor]:
        stops = {list(_FIRES.values())[i]: i for i in indices}
        outputs = {}
        for position, module in enumerate(self.features):
            x = module(x)
            if position in stops:
                outputs[stops[position]] = x
                if len(outputs) == len(stops):
                    break
        return [outputs[i] for i in indices]


def squeezenet_from_keras(layers: dict[str, list[np.ndarray]]) -> dict[str, torch.Tensor]:
    """The state dict of :class:`SqueezeNet11` from Keras SqueezeNet 1.1 weights."""
    missing = [n for n in ("conv1", "conv10", *(f"{f}/squeeze1x1" for f in _FIRES)) if n not in layers]
    if missing:
        raise WeightsError(
            f"These Keras weights are not SqueezeNet 1.1: layers {missing[:4]} are missing "
            f"(found {list(layers)[:6]}...)."
        )
    state: dict[str, torch.Tensor] = {}
    state["features.0.weight"], state["features.0.bias"] = keras_conv(layers["conv1"])
    for fire, index in _FIRES.items():
        for part in ("squeeze", "expand1x1", "expand3x3"):
            keras_name = f"{fire}/{'squeeze1x1' if part == 'squeeze' else part}"
            weight, bias = keras_conv(layers[keras_name])
            state[f"features.{index}.{part}.weight"] = weight
            state[f"features.{index}.{part}.bias"] = bias
    state["classifier.1.weight"], state["classifier.1.bias"] = keras_conv(layers["conv10"])
    return state
