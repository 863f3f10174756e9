"""One interface for every backbone: a network cut at a layer, mapping images to feature vectors."""

from __future__ import annotations

from collections.abc import Callable, Mapping

import torch
from torch import nn

from graft.catalog import MAP_POOLS, POOLS
from graft.data.preprocess import PreprocessConfig
from graft.errors import BackboneError

__all__ = ["POOLS", "Backbone", "ImageModel", "pool_tokens", "reduce_map", "token_pools"]


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


def _token_layout(model: nn.Module) -> tuple[int, bool]:
    """(prefix tokens before the patches, whether the first is a class token): timm puts the
    class token first, then any register tokens."""
    has_cls = getattr(model, "cls_token", None) is not None
    return int(getattr(model, "num_prefix_tokens", int(has_cls))), has_cls


def token_pools(model: nn.Module) -> tuple[str, ...]:
    """The pools a transformer's tokens take: ``avg`` (its own pooling) and the token pools its
    layout has."""
    _, has_cls = _token_layout(model)
    pools = ["avg", *(("cls", "cls+mean") if has_cls else ()), "mean"]
    if getattr(model, "attn_pool", None) is not None:
        pools.append("map")
    return tuple(p for p in POOLS if p in pools)


def pool_tokens(model: nn.Module, tokens: torch.Tensor, pool: str) -> torch.Tensor:
    """(N, T, D) tokens after the final norm -> (N, D) (``cls+mean``: (N, 2D)), each part through
    the model's ``fc_norm`` as its own head does: ``avg`` is the model's own pooled features."""
    if pool == "avg":
        return model.forward_head(tokens, pre_logits=True).flatten(1)
    prefix, _ = _token_layout(model)
    fc_norm = getattr(model, "fc_norm", None) or nn.Identity()
    if pool == "map":
        return fc_norm(model.attn_pool(tokens))
    parts = []
    if pool in ("cls", "cls+mean"):
        parts.append(fc_norm(tokens[:, 0]))
    if pool in ("mean", "cls+mean"):
        parts.append(fc_norm(tokens[:, prefix:].mean(dim=1)))
    return torch.cat(parts, dim=1)


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
        pool: How a spatial map is reduced (see :func:`reduce_map`), or a transformer's tokens
            (see :func:`pool_tokens`).
        normalize: ``l2``: each feature vector scaled to unit length; ``none``.
        tta: ``flip``: the features of the image and of its mirror image, averaged (before
            ``normalize``); ``none``.
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
        normalize: str = "none",
        tta: str = "none",
    ) -> None:
        super().__init__()
        self.model = model.eval()
        self.name = name
        self.pool = pool
        self.normalize = normalize
        self.tta = tta
        self.preprocess = preprocess
        self.weights_sha256 = weights_sha256
        self.weights_source = weights_source
        self._cuts = dict(cuts or {})
        self._aliases = dict(layer_aliases or {})
        self.layer = self._aliases.get(layer, layer)
        self._stage_index = self._resolve_layer(self.layer)
        self._tokens: bool | None = None  # whether the pool cut sees tokens (set on first call)
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
        features = self._cut(x)
        if self.tta == "flip":  # inside the exported graph, so every door does the same
            features = (features + self._cut(x.flip(3))) / 2
        if self.normalize == "l2":
            features = nn.functional.normalize(features, dim=1)
        return features

    def _cut(self, x: torch.Tensor) -> torch.Tensor:
        if self.layer in self._cuts:
            return self._cuts[self.layer](self.model, x)
        if self.layer == "logits":
            return self.model(x)
        if self.layer == "pool":
            fmap = self.model.forward_features(x)
            self._check_pool(tokens=fmap.ndim == 3)
            if fmap.ndim == 3:
                return pool_tokens(self.model, fmap, self.pool)
            if self.pool == "avg":
                return self.model.forward_head(fmap, pre_logits=True).flatten(1)
            return reduce_map(fmap, self.pool)
        (fmap,) = self.model.forward_intermediates(
            x, indices=[self._stage_index], intermediates_only=True
        )
        self._check_pool(tokens=False)
        return reduce_map(fmap, self.pool)

    def _check_pool(self, *, tokens: bool) -> None:
        """A pool that does not fit what the cut gives: a one-line error naming those that do."""
        if self._tokens == tokens:
            return
        fits = token_pools(self.model) if tokens else MAP_POOLS
        if self.pool not in fits:
            what = "a transformer's tokens" if tokens else "a feature map"
            raise BackboneError(
                f"pool={self.pool!r} does not fit {self.name!r} at layer {self.layer!r}, which "
                f"gives {what}: use one of {', '.join(fits)}.", parameter="pool")
        self._tokens = tokens

    def _pretrained_tag(self) -> str | None:
        """The timm pretrained tag an untagged name's hub weights (and preprocessing) came
        from: the name does not say which (a tagged name does)."""
        cfg = getattr(self.model, "pretrained_cfg", None)
        if "." in self.name or not self.weights_source.startswith("hub:"):
            return None
        return cfg.get("tag") if isinstance(cfg, dict) else None

    def config(self) -> dict:
        """Everything needed to rebuild and describe this backbone (stored in artifacts)."""
        return {
            "name": self.name,
            "layer": self.layer,
            "pool": self.pool,
            **({"normalize": self.normalize} if self.normalize != "none" else {}),
            **({"tta": self.tta} if self.tta != "none" else {}),
            **({"pretrained_tag": tag} if (tag := self._pretrained_tag()) else {}),
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
