"""The backbone registry and factory: pretrained networks by name, cut where the user says."""

from __future__ import annotations

import dataclasses
import difflib
import os
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from graft.backbones.backbone import POOLS, Backbone, Cut
from graft.backbones.keras import read_keras_h5
from graft.backbones.weights import (
    _first_line,
    apply_state_dict,
    download_weights,
    hub_reachable,
    load_state_dict_file,
    state_dict_sha256,
)
from graft.catalog import DEFAULT_BACKBONE, NORMALIZATIONS, TTA, one_of
from graft.config import resolve_cache_dir
from graft.data.preprocess import PreprocessConfig
from graft.errors import BackboneError, ConfigError, WeightsError

__all__ = [
    "DEFAULT_BACKBONE",
    "BackboneSpec",
    "create_backbone",
    "create_backbones",
    "describe_backbone",
    "list_backbones",
    "parse_backbone_names",
    "per_backbone",
    "register_backbone",
    "resolve_backbone_name",
]

_KERAS_SUFFIXES = (".h5", ".hdf5", ".keras")


@dataclass(frozen=True)
class BackboneSpec:
    """A registered backbone.

    Attributes:
        name: The registry name (the timm model name for timm models).
        aliases: Other names users type for it.
        default_layer: The cut used when ``layer`` is not given.
        offline_weights: Returns a local weights file that needs no network, or None.
        description: One line for ``graft backbones``.
        builder: Builds the untrained network when it is not a timm model (timm's interface).
        preprocess: The preprocessing, when the network has no timm ``pretrained_cfg``.
        cuts: Named cuts beyond pool/logits/stages (``fc6`` of VGG), ``(model, x) -> (N, D)``.
        layer_aliases: Classic layer names mapped to graft's (``relu6`` -> ``fc6``).
        from_keras: Converts Keras ``.h5`` weights (``{layer: [arrays]}``) to a state dict.
        image_size: The input size its recipe uses (a linear-eval protocol's), when not the
            network's own.
        pool: The pooling its recipe uses, when not ``avg`` (the network's own).
        normalize: The feature normalization its recipe uses.
        crop_pct: The center crop its recipe uses, when not the network's own.
    """

    name: str
    aliases: tuple[str, ...] = ()
    default_layer: str = "pool"
    offline_weights: Callable[[], Path | None] | None = None
    description: str = ""
    builder: Callable[[], nn.Module] | None = None
    preprocess: PreprocessConfig | None = None
    cuts: Mapping[str, Cut] = field(default_factory=dict)
    layer_aliases: Mapping[str, str] = field(default_factory=dict)
    from_keras: Callable[[dict[str, list[np.ndarray]]], dict[str, torch.Tensor]] | None = None
    image_size: int | None = None
    pool: str = "avg"
    normalize: str = "none"
    crop_pct: float | None = None

    def build(self, image_size: int | None = None, seed: int | None = None) -> nn.Module:
        """The untrained network (its random weights drawn from ``seed``, if given); a timm
        transformer is built for ``image_size`` (position embeddings sized for it), a
        convolutional one takes any size as it is."""
        if self.builder is not None:
            if seed is not None:
                torch.manual_seed(seed)
            return self.builder()
        return create_timm(self.name, image_size, pretrained=False, seed=seed)


def create_timm(name: str, image_size: int | None, *, pretrained: bool,
                seed: int | None = None) -> nn.Module:
    """``timm.create_model``, built for ``image_size`` when the network takes one (a
    transformer: position embeddings sized for it); a convolutional network takes any size as
    it is. ``seed`` draws the same random weights whichever way it is built."""
    import timm

    if seed is not None:
        torch.manual_seed(seed)
    if image_size:
        try:
            return timm.create_model(name, pretrained=pretrained, img_size=image_size)
        except TypeError as exc:  # a network without img_size
            if "img_size" not in str(exc):
                raise
            if seed is not None:
                torch.manual_seed(seed)
    return timm.create_model(name, pretrained=pretrained)


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


def resolve_backbone_name(name: str) -> str:
    """Map a registry name, alias or timm model name to the canonical name.

    Raises:
        BackboneError: For an unknown name, listing close matches.
    """
    if not name or not isinstance(name, str):
        raise BackboneError(f"A backbone name must be a non-empty string. Got {name!r}.")
    key = name.strip()
    if key.lower() in _ALIASES:
        return _ALIASES[key.lower()]
    import timm

    timm_names = timm.list_models()
    if key in timm_names:
        return key
    arch, dot, tag = key.partition(".")
    arch = _ALIASES.get(arch.lower(), arch)
    if dot and arch in timm_names:  # NAME.TAG: the tag picks the weights and preprocessing
        tags = timm.list_pretrained(f"{arch}.*")
        if f"{arch}.{tag}" in tags:
            return f"{arch}.{tag}"
        raise BackboneError(
            f"{arch!r} has no pretrained tag {tag!r}. Its tags: "
            f"{', '.join(t.partition('.')[2] for t in tags) or 'none'}.", parameter="backbone")
    candidates = list(_ALIASES) + timm_names
    close = list(dict.fromkeys(difflib.get_close_matches(key.lower(), candidates, n=8,
                                                         cutoff=0.6)))[:5]
    hint = f" Did you mean: {', '.join(close)}?" if close else ""
    raise BackboneError(
        f"Unknown backbone {name!r}.{hint} Run 'graft backbones' for the registry; any timm model "
        f"name also works (timm.list_models())."
    )


def _spec(name: str) -> BackboneSpec:
    canonical = resolve_backbone_name(name)
    return _REGISTRY.get(canonical, BackboneSpec(name=canonical))


def _preprocess(spec: BackboneSpec, model: nn.Module, image_size: int | None) -> PreprocessConfig:
    if spec.preprocess is None:
        config = PreprocessConfig.from_timm(model, image_size=image_size)
        return config if spec.crop_pct is None else dataclasses.replace(config,
                                                                         crop_pct=spec.crop_pct)
    if image_size:
        return dataclasses.replace(spec.preprocess, input_size=(3, image_size, image_size))
    return spec.preprocess


def _backbone(spec: BackboneSpec, model: nn.Module, *, layer: str | None, pool: str,
              image_size: int | None, weights_sha256: str, source: str,
              normalize: str = "none", tta: str = "none") -> Backbone:
    return Backbone(
        model, name=spec.name, layer=layer or spec.default_layer, pool=pool,
        preprocess=_preprocess(spec, model, image_size), weights_sha256=weights_sha256,
        weights_source=source, cuts=spec.cuts, layer_aliases=spec.layer_aliases,
        normalize=normalize, tta=tta,
    )


def _classifier(model: nn.Module, layer: str) -> tuple[str, ...]:
    """The classifier's module names, which a checkpoint need not hold (nor fit) unless the cut
    is ``logits``."""
    if layer == "logits":
        return ()
    names = (getattr(model, "pretrained_cfg", None) or {}).get("classifier") or ()
    return (names,) if isinstance(names, str) else tuple(names)


def create_backbone(
    name: str = DEFAULT_BACKBONE,
    *,
    layer: str | None = None,
    weights: str | os.PathLike | None = None,
    pool: str | None = None,
    image_size: int | None = None,
    cache_dir: str | os.PathLike | None = None,
    normalize: str | None = None,
    tta: str = "none",
) -> Backbone:
    """Build a pretrained backbone cut at ``layer``; ``pool``, ``image_size`` and ``normalize``
    default to the backbone's recipe (see ``graft backbones``).

    Args:
        name: Registry name, alias, or any timm model name, with its pretrained tag
            (``vit_small_patch14_dinov2.lvd142m``: the tag picks the weights and their
            preprocessing).
        layer: The cut (default: the backbone's default, usually ``"pool"``).
        weights: ``None`` for the offline weights shipped with graft's dependencies, else the model
            hub; a local ``.pth``/``.safetensors`` state dict or a Keras ``.h5`` file (for
            backbones that map Keras weights); an ``http(s)://`` URL (downloaded once into the
            cache); or ``"random"`` for an untrained network (tests only: features from random
            weights are not useful for real data).
        pool: Reduction of a spatial map (``avg``, ``max``, ``avgmax``, ``flatten``) or of a
            transformer's tokens (``cls``, ``mean``, ``cls+mean``, ``map``); ``avg`` is the
            network's own pooling.
        image_size: The input resolution (e.g. 160 for MobileNetV2); a transformer is built for
            it, its position embeddings resampled.
        cache_dir: Where downloads go (default: see ``resolve_cache_dir``).
        normalize: ``l2`` scales each feature vector to unit length; ``none``.
        tta: ``flip`` averages the features of each image and its mirror image (twice the
            cost); ``none``.

    Raises:
        BackboneError: Unknown name or layer.
        WeightsError: No weights can be had; the message says how to fix it. graft never falls
            back to random weights on its own.
    """
    spec = _spec(name)
    pool, normalize = pool or spec.pool, normalize or spec.normalize
    image_size = image_size or spec.image_size
    one_of("pool", pool, POOLS)
    one_of("normalize", normalize, NORMALIZATIONS)
    one_of("tta", tta, TTA)
    model, source = _pretrained(spec, weights, layer or spec.default_layer, image_size,
                                cache_dir)
    return _backbone(spec, model, layer=layer, pool=pool, image_size=image_size,
                     weights_sha256=state_dict_sha256(model), source=source, normalize=normalize,
                     tta=tta)


def _pretrained(spec: BackboneSpec, weights: str | os.PathLike | None, layer: str,
                image_size: int | None, cache_dir: str | os.PathLike | None
                ) -> tuple[nn.Module, str]:
    """The network with its weights, and where they came from."""
    weights_str = os.fspath(weights) if weights is not None else None
    if weights_str == "random":  # the same "random" backbone every time, so caches stay valid
        return spec.build(image_size, seed=0), "random"
    if weights_str is None:
        offline = spec.offline_weights() if spec.offline_weights else None
        if offline is None:
            return _load_from_hub(spec, image_size), f"hub:{spec.name}"
        path, source = offline, f"package:{offline.name}"
    elif weights_str.startswith(("http://", "https://")):
        path, source = download_weights(weights_str, resolve_cache_dir(cache_dir)), weights_str
    else:
        path = Path(weights_str).expanduser()
        source = f"file:{path.name}"
    model = spec.build(image_size)
    _load_file(spec, model, path, _classifier(model, layer))
    return model, source


def _load_file(spec: BackboneSpec, model: nn.Module, path: Path,
               optional: tuple[str, ...] = ()) -> None:
    if path.suffix.lower() in _KERAS_SUFFIXES:
        if spec.from_keras is None:
            takers = [s.name for s in _REGISTRY.values() if s.from_keras is not None]
            raise WeightsError(
                f"{path} holds Keras weights, which graft maps only for: {', '.join(takers)}. "
                f"For {spec.name!r}, pass a PyTorch .pth/.safetensors state dict."
            )
        if not path.is_file():
            raise WeightsError(f"Weights file {path} does not exist. Check the weights=PATH given.",
                               parameter="weights")
        state = spec.from_keras(read_keras_h5(path))
    else:
        state = load_state_dict_file(path)
    try:
        apply_state_dict(model, state, str(path), optional)
    except WeightsError as first:
        # timm's own conversion for its family: position embeddings resampled to the size the
        # network was built for, original (OpenAI, DINOv2) key names mapped to timm's
        convert = getattr(sys.modules.get(type(model).__module__), "checkpoint_filter_fn", None)
        if convert is None:
            raise
        try:
            apply_state_dict(model, convert(dict(state), model), str(path), optional)
        except Exception:  # the conversion did not help: the first error names the file's keys
            raise first from None


def _load_from_hub(spec: BackboneSpec, image_size: int | None = None) -> nn.Module:
    # "weights" once, as the parameter: naming() would rewrite every bare mention of it
    fix = (
        f"To fix it: connect to the network, or pass weights=PATH, a local file of them for "
        f"{spec.name}, or use the default backbone {DEFAULT_BACKBONE!r}, which ships "
        f"pretrained with graft."
    )
    if spec.builder is not None:
        raise WeightsError(f"{spec.name!r} has no pretrained set on the model hub. {fix}",
                           parameter="weights")
    if not hub_reachable():
        raise WeightsError(
            f"Nothing pretrained for {spec.name!r} on this machine, and the model hub cannot "
            f"be reached. {fix}", parameter="weights"
        )
    try:
        return create_timm(spec.name, image_size, pretrained=True)
    except Exception as exc:  # hub/network errors come in many types
        reason = _first_line(str(exc))  # never torch's advice to load with weights_only=False
        raise WeightsError(
            f"Downloading the pretrained {spec.name!r} failed ({type(exc).__name__}"
            f"{': ' + reason if reason else ''}). {fix}", parameter="weights"
        ) from exc


def parse_backbone_names(value: str | Sequence[str] | None) -> list[str]:
    """``"vgg16+resnet50"`` or ``["vgg16", "resnet50"]`` -> canonical names (fusion order kept)."""
    if value is None:
        return [DEFAULT_BACKBONE]
    parts = [value] if isinstance(value, str) else list(value)
    names = [resolve_backbone_name(p) for part in parts for p in part.split("+") if p.strip()]
    if not names:
        raise ConfigError("No backbone given. Name one, e.g. backbone='tf_efficientnet_lite0'.",
                          parameter="backbone")
    if len(set(names)) != len(names):
        raise ConfigError(f"A backbone appears twice in {'+'.join(names)}; fuse each one once.")
    return names


def per_backbone(option: str, value: Any, names: list[str],
                 broadcast: tuple[Any, ...] = ()) -> list[Any]:
    """Spread a per-backbone option (``weights``, ``layer``) over fused backbones.

    Each entry is ``NAME=VALUE`` (NAME a backbone name or alias) or a bare value; a bare value
    applies to a single backbone, or to all of them if it is one of ``broadcast``.
    """
    result: list[Any] = [None] * len(names)
    if value is None:
        return result
    entries = [value] if isinstance(value, (str, os.PathLike)) else list(value)
    for entry in entries:
        text = os.fspath(entry)
        key, sep, rest = text.partition("=")
        target = None
        if sep:
            try:
                target = resolve_backbone_name(key)
            except BackboneError:
                target = None  # an '=' inside a path or URL
        if target is not None:
            if target not in names:
                raise ConfigError(
                    f"{option}={text!r} names {target!r}, which is not one of the backbones "
                    f"({'+'.join(names)}).", parameter=option
                )
            result[names.index(target)] = rest
        elif len(names) == 1 or text in broadcast:
            result = [text] * len(names) if len(names) > 1 else [text]
        else:
            raise ConfigError(
                f"{option}={text!r} is ambiguous with fused backbones {'+'.join(names)}. "
                f"Write NAME={text} for each backbone it belongs to.", parameter=option
            )
    return result


def create_backbones(
    names: str | Sequence[str] | None = None,
    *,
    layer: str | Sequence[str] | None = None,
    weights: str | os.PathLike | Sequence[str] | None = None,
    pool: str | None = None,
    image_size: int | None = None,
    cache_dir: str | os.PathLike | None = None,
    normalize: str | None = None,
    tta: str = "none",
) -> list[Backbone]:
    """One or several (fused) backbones; ``weights`` and ``layer`` may be ``NAME=VALUE`` each."""
    resolved = parse_backbone_names(names)
    weights_list = per_backbone("weights", weights, resolved, broadcast=("random",))
    layers = per_backbone("layer", layer, resolved)
    return [
        create_backbone(name, layer=lay, weights=w, pool=pool, image_size=image_size,
                        cache_dir=cache_dir, normalize=normalize, tta=tta)
        for name, lay, w in zip(resolved, layers, weights_list)
    ]


def describe_backbone(name: str) -> dict[str, Any]:
    """What ``graft backbones --json`` shows: cuts with their dims, input, preprocessing, weights.

    Shapes are worked out on PyTorch's ``meta`` device: no weights are loaded and nothing is
    computed, so listing even VGG-16 is instant.
    """
    spec = _spec(name)
    with torch.device("meta"):
        model = spec.build(spec.image_size)
        probe = _backbone(spec, model, layer=None, pool=spec.pool, image_size=spec.image_size,
                          weights_sha256="", source="", normalize=spec.normalize)
        layers = []
        stages = {info["module"]: info["num_chs"]
                  for info in getattr(model, "feature_info", None) or []
                  if hasattr(model, "forward_intermediates")}
        for layer in probe.layer_names():
            if layer in spec.layer_aliases or (layer.startswith("stage") and layer[5:].isdigit()):
                continue  # listed under their canonical names
            if layer in stages:  # a stage's average-pooled width: its channels, no probe
                layers.append({"layer": layer, "dim": int(stages[layer])})
                continue
            pool = "flatten" if layer == "pool5" else "avg"
            cut = _backbone(spec, model, layer=layer, pool=pool, image_size=spec.image_size,
                            weights_sha256="", source="")
            layers.append({"layer": layer, "dim": cut.num_features})
    offline = bool(spec.offline_weights and spec.offline_weights() is not None)
    cfg = probe.preprocess
    return {
        "name": spec.name,
        "aliases": list(spec.aliases),
        "description": spec.description,
        "default_layer": probe.layer,
        "default_dim": probe.num_features,
        "pool": spec.pool,
        "normalize": spec.normalize,
        "layers": layers,
        "layer_aliases": dict(spec.layer_aliases),
        "input_size": list(cfg.input_size),
        "interpolation": cfg.interpolation,
        "crop_pct": cfg.crop_pct,
        "crop_mode": cfg.crop_mode,
        "mean": list(cfg.mean),
        "std": list(cfg.std),
        "channel_order": cfg.channel_order,
        "offline_weights": offline,
        "keras_weights": spec.from_keras is not None,
    }
