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
                raise ConfigError(f"--unfreeze must be 'all' or a count >= 0. Got {blocks!r}.")
            chosen = self.groups[len(self.groups) - count:] if count else []
        params = dict(self.backbone.model.named_parameters())
        for group in chosen:
            for name in group:
                params[name].requires_grad_(True)
        return len(chosen)

    def trainable_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters() if p.requires_grad)
