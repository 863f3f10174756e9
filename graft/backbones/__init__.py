"""Backbones: a registry of pretrained networks, cut at a layer, mapping images to features."""

from graft.backbones import zoo as _zoo  # noqa: F401  (registers the built-in backbones)
from graft.backbones.backbone import POOLS, Backbone, ImageModel, reduce_map
from graft.backbones.registry import (
    DEFAULT_BACKBONE,
    BackboneSpec,
    create_backbone,
    create_backbones,
    describe_backbone,
    list_backbones,
    parse_backbone_names,
    per_backbone,
    register_backbone,
    resolve_backbone_name,
)
from graft.backbones.weights import load_state_dict_file, state_dict_sha256

__all__ = [
    "DEFAULT_BACKBONE",
    "POOLS",
    "Backbone",
    "BackboneSpec",
    "ImageModel",
    "create_backbone",
    "create_backbones",
    "describe_backbone",
    "list_backbones",
    "load_state_dict_file",
    "parse_backbone_names",
    "per_backbone",
    "reduce_map",
    "register_backbone",
    "resolve_backbone_name",
    "state_dict_sha256",
]
