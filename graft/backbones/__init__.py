"""Backbones: a registry of pretrained networks, cut at a layer, mapping images to features."""

from graft.backbones.registry import (
    DEFAULT_BACKBONE,
    POOLS,
    Backbone,
    BackboneSpec,
    ImageModel,
    create_backbone,
    list_backbones,
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
    "list_backbones",
    "load_state_dict_file",
    "register_backbone",
    "resolve_backbone_name",
    "state_dict_sha256",
]
