"""Fine-tuning: frozen base + new head, then the top blocks unfrozen at a lower learning rate."""

from graft.data.augment import AUGMENTATIONS, parse_augment
from graft.finetune.model import FinetuneModel, parameter_groups
from graft.finetune.trainer import FinetuneConfig, FinetuneResult, finetune

__all__ = [
    "AUGMENTATIONS",
    "FinetuneConfig",
    "FinetuneModel",
    "FinetuneResult",
    "finetune",
    "parameter_groups",
    "parse_augment",
]
