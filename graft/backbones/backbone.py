"""One interface for every backbone: a network cut at a layer, mapping images to feature vectors."""

from __future__ import annotations

from collections.abc import Callable, Mapping

import torch
from torch import nn

from graft.catalog import POOLS
from graft.data.preprocess import PreprocessConfig
from graft.errors import BackboneError

__all__ = ["POOLS", "Backbone", "ImageModel", "reduce_map"]


Cut = Callable[[nn.Module, torch.Tensor], torch.Tensor]


def reduce_map(fmap: torch.Tensor, pool: str) -> torch.Tensor:
    """(N, C, H, W) -> (N, D): global average, max, both concatenated, or flattened."""
    if fmap.ndim == 2:
        return fmap
    if pool == "flatten":
        return fmap.flatten(1)
    avg = fmap.mean(dim=(2, 3))
    if pool == "avg":
        return avg
    peak = fmap.amax(dim=(2, 3))
    return peak if pool == "max" else torch.cat([avg, peak], dim=1)


class Backbone(nn.Module):
    """A pretrained network cut at ``layer``: float NCHW (normalized) -> ``(N, num_features)``.

    The wrapped model follows timm's interface (``forward_features``, ``forward_head``,
    ``feature_info``, ``forward_intermediates``); backbones from elsewhere are adapted to it.

    Layers:
        ``pool``: the network's own pooled features before the classifier (with ``pool="avg"``);
            with another ``pool``, the last feature map reduced that way.
        ``logits``: the classifier's outputs.
        A stage: a module name from ``feature_info`` (or ``stage0``, ``stage1``, ...), reduced
            with ``pool``.
        Named cuts of the backbone (``fc6`` and ``pool5`` for VGG), and their aliases.

    Attributes:
        name: Registry (or timm) name.
        layer: The cut, canonical name.
        pool: How a spatial map is reduced (see :func:`reduce_map`).
        preprocess: The config every input must be prepared with.
        weights_sha256: Hash of the loaded tensors (see ``state_dict_sha256``).
        weights_source: Where the weights came from, for the record.
        num_features: Length of the feature vector.
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        name: str,
        layer: str,
        pool: str,
        preprocess: PreprocessConfig,
        weights_sha256: str,
        weights_source: str,
        cuts: Mapping[str, Cut] | None = None,
        layer_aliases: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__()
        self.model = model.eval()
        self.name = name
        self.pool = pool
        self.preprocess = preprocess
        self.weights_sha256 = weights_sha256
        self.weights_source = weights_source
        self._cuts = dict(cuts or {})
        self._aliases = dict(layer_aliases or {})
        self.layer = self._aliases.get(layer, layer)
        self._stage_index = self._resolve_layer(self.layer)
        device = next(self.model.parameters()).device
        with torch.no_grad():
            probe = torch.zeros(1, *preprocess.input_size, device=device)
            self.num_features = int(self.forward(probe).shape[1])

    def _stages(self) -> list[dict]:
        if not hasattr(self.model, "forward_intermediates"):
            return []
        return list(getattr(self.model, "feature_info", []) or [])

    def layer_names(self) -> list[str]:
        """Every valid ``layer`` for this network (aliases included)."""
        names = ["pool", "logits", *self._cuts, *self._aliases]
        for index, info in enumerate(self._stages()):
            names += [info["module"], f"stage{index}"]
        return list(dict.fromkeys(names))

    def _resolve_layer(self, layer: str) -> int | None:
        if layer in ("pool", "logits") or layer in self._cuts:
            return None
        for index, info in enumerate(self._stages()):
            if layer in (info["module"], f"stage{index}"):
                return index
        raise BackboneError(
            f"Unknown layer {layer!r} for backbone {self.name!r}. Valid layers: "
            f"{', '.join(self.layer_names())}."
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.layer in self._cuts:
            return self._cuts[self.layer](self.model, x)
        if self.layer == "logits":
            return self.model(x)
        if self.layer == "pool":
            fmap = self.model.forward_features(x)
            if self.pool == "avg":
                return self.model.forward_head(fmap, pre_logits=True).flatten(1)
            return reduce_map(fmap, self.pool)
        (fmap,) = self.model.forward_intermediates(
            x, indices=[self._stage_index], intermediates_only=True
        )
        return reduce_map(fmap, self.pool)

    def config(self) -> dict:
        """Everything needed to rebuild and describe this backbone (stored in artifacts)."""
        return {
            "name": self.name,
            "layer": self.layer,
            "pool": self.pool,
            "num_features": self.num_features,
            "weights_sha256": self.weights_sha256,
            "weights_source": self.weights_source,
            "preprocess": self.preprocess.to_dict(),
        }


class ImageModel(nn.Module):
    """``uint8`` NHWC RGB images -> features: normalization lives in the graph, so it travels with it."""

    def __init__(self, backbone: Backbone) -> None:
        super().__init__()
        self.backbone = backbone
        cfg = backbone.preprocess
        mean = torch.tensor(cfg.mean, dtype=torch.float32) * 255.0
        std = torch.tensor(cfg.std, dtype=torch.float32) * 255.0
        self.register_buffer("mean", mean.view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", std.view(1, 3, 1, 1), persistent=False)
        self.bgr = cfg.channel_order == "BGR"

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = (images.permute(0, 3, 1, 2).float() - self.mean) / self.std
        if self.bgr:
            x = x.flip(1)
        return self.backbone(x)
