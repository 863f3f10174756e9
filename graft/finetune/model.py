"""The fine-tuning network: a pretrained backbone (frozen, then partly unfrozen) and a new head."""

from __future__ import annotations

import torch
from torch import nn

from graft.backbones import Backbone, ImageModel
from graft.errors import ConfigError

__all__ = ["FinetuneModel", "parameter_groups"]


def parameter_groups(model: nn.Module) -> list[list[str]]:
    """The backbone's parameter names in blocks, input side first.

    timm models describe their blocks (``group_matcher``, used for layer-wise learning rates);
    other networks fall back to their top-level children.
    """
    names = [name for name, _ in model.named_parameters()]
    if hasattr(model, "group_matcher"):
        from timm.models import group_parameters

        groups = group_parameters(model, model.group_matcher(coarse=True))
        return [list(group) for _, group in sorted(groups.items()) if group]
    grouped: dict[str, list[str]] = {}
    for name in names:
        grouped.setdefault(name.split(".")[0], []).append(name)
    return list(grouped.values())


class FinetuneModel(nn.Module):
    """uint8 NHWC images -> class logits: ``ImageModel(backbone)``, dropout, a new dense layer.

    The backbone always runs with BatchNorm in inference mode (Keras ``training=False``), also
    when its top blocks are unfrozen: re-estimating batch statistics from small batches would
    wreck the pretrained features.
    """

    def __init__(self, backbone: Backbone, n_classes: int, dropout: float = 0.2) -> None:
        super().__init__()
        if hasattr(backbone.model, "reset_classifier"):
            backbone.model.reset_classifier(0)  # the ImageNet classifier is never used here
        self.backbone = backbone
        self.image_model = ImageModel(backbone)
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(backbone.num_features, n_classes)
        self.groups = parameter_groups(backbone.model)
        self.freeze_backbone()

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.dropout(self.image_model(images)))

    def train(self, mode: bool = True) -> FinetuneModel:
        super().train(mode)
        self.image_model.eval()  # BatchNorm in inference mode, always
        return self

    def freeze_backbone(self) -> None:
        for parameter in self.backbone.parameters():
            parameter.requires_grad_(False)

    def unfreeze(self, blocks: int | str) -> int:
        """Unfreeze the top ``blocks`` blocks (or ``"all"``); return how many there are now."""
        if blocks == "all":
            chosen = self.groups
        else:
            count = int(blocks)
            if count < 0:
                raise ConfigError(f"unfreeze must be 'all' or a count >= 0. Got {blocks!r}.",
                                  parameter="unfreeze")
            chosen = self.groups[len(self.groups) - count:] if count else []
        params = dict(self.backbone.model.named_parameters())
        for group in chosen:
            for name in group:
                params[name].requires_grad_(True)
        return len(chosen)

    def trainable_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters() if p.requires_grad)

    def _stages(self) -> list[nn.Module] | None:
        """The backbone's feature extractor as a flat sequence of modules, if it is one.

        Many timm networks run their top-level children in order (EfficientNet/MobileNet:
        stem, blocks..., head conv; ResNet: stem, layer1-4). That is checked on a probe input,
        never assumed; None when it does not hold.
        """
        if self.backbone.layer != "pool" or self.backbone.pool != "avg":
            return None
        if self.backbone.normalize != "none" or self.backbone.tta != "none":
            return None  # the split halves would skip what Backbone.forward adds after the cut
        model = self.backbone.model
        skip = {"global_pool", "head", "fc", "classifier", "head_drop", "pre_logits"}
        stages: list[nn.Module] = []
        for name, child in model.named_children():
            if name in skip:
                continue
            if isinstance(child, nn.Sequential) and name in ("blocks", "stages", "features"):
                stages.extend(child.children())
            else:
                stages.append(child)
        probe = torch.randn(2, *self.backbone.preprocess.input_size,
                            device=next(model.parameters()).device)
        with torch.no_grad():
            x = probe
            try:
                for stage in stages:
                    x = stage(x)
            except Exception:  # a network that is not a plain sequence
                return None
            if x.shape != (expected := model.forward_features(probe)).shape or not torch.allclose(
                    x, expected, atol=1e-4, rtol=1e-4):
                return None
        return stages

    def split_frozen_prefix(self) -> tuple[nn.Module, nn.Module] | None:
        """(prefix, rest): the frozen modules before the first trainable one, and the rest.

        With no augmentation the prefix's output for an image never changes, so it can be
        computed once and each epoch runs only ``rest`` (in stage 1, with the whole backbone
        frozen, the prefix ends with the pooled features and ``rest`` is the new head). None if
        the backbone is not a checked plain sequence, or nothing is frozen.
        """
        stages = self._stages()
        if not stages:
            return None
        first = next((i for i, stage in enumerate(stages)
                      if any(p.requires_grad for p in stage.parameters())), len(stages))
        if first == 0:
            return None
        frozen_all = first == len(stages)  # stage 1: the prefix ends with the pooled features
        backbone, image_model = self.backbone, self.image_model

        class Prefix(nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.stages = nn.Sequential(*stages[:first])

            def forward(self, images: torch.Tensor) -> torch.Tensor:
                x = (images.permute(0, 3, 1, 2).float() - image_model.mean) / image_model.std
                if image_model.bgr:
                    x = x.flip(1)
                x = self.stages(x)
                if frozen_all:
                    x = backbone.model.forward_head(x, pre_logits=True).flatten(1)
                return x

        outer = self

        class Rest(nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.stages = nn.Sequential(*stages[first:])

            def forward(self, x: torch.Tensor) -> torch.Tensor:
                if not frozen_all:
                    x = backbone.model.forward_head(self.stages(x), pre_logits=True).flatten(1)
                return outer.classifier(outer.dropout(x))

        return Prefix(), Rest()
