"""Images for fine-tuning: augmentation on the CPU side, producing the same uint8 input the
exported graph takes, so training and inference share one preprocessing path."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image
from torchvision.transforms import v2

from graft.data.dataset import Sample
from graft.data.images import load_image
from graft.data.preprocess import PreprocessConfig, resize_and_crop
from graft.errors import ConfigError

__all__ = ["AUGMENTATIONS", "ImageDataset", "parse_augment"]

AUGMENTATIONS = ("flip", "rotate", "crop", "color")
_INTERPOLATION = {"nearest": v2.InterpolationMode.NEAREST, "bilinear": v2.InterpolationMode.BILINEAR,
                  "bicubic": v2.InterpolationMode.BICUBIC, "lanczos": v2.InterpolationMode.LANCZOS,
                  "box": v2.InterpolationMode.BOX}


def parse_augment(value: str | Sequence[str] | None) -> tuple[str, ...]:
    """``"flip,rotate,crop"`` -> a validated tuple (``"none"`` or empty: no augmentation)."""
    if value is None:
        return ()
    parts = value.split(",") if isinstance(value, str) else list(value)
    parts = [p.strip().lower() for p in parts if p.strip() and p.strip().lower() != "none"]
    unknown = [p for p in parts if p not in AUGMENTATIONS]
    if unknown:
        raise ConfigError(
            f"Unknown augmentation(s) {unknown}. Expected a comma-separated list of "
            f"{', '.join(AUGMENTATIONS)} (or 'none')."
        )
    return tuple(dict.fromkeys(parts))


def _augmentation(augment: tuple[str, ...], config: PreprocessConfig) -> v2.Compose | None:
    if not augment:
        return None
    steps: list = []
    if "flip" in augment:
        steps.append(v2.RandomHorizontalFlip())
    if "rotate" in augment:
        # Keras RandomRotation(0.2), as in the tutorial: up to 20 % of a full turn either way.
        steps.append(v2.RandomRotation(degrees=72))
    if "color" in augment:
        steps.append(v2.ColorJitter(brightness=0.2, contrast=0.2, saturation=0.2))
    if "crop" in augment:
        steps.append(v2.RandomResizedCrop(config.size, scale=(0.5, 1.0),
                                          interpolation=_INTERPOLATION[config.interpolation]))
    return v2.Compose(steps)


class ImageDataset(torch.utils.data.Dataset):
    """Labeled images as ``uint8`` (H, W, 3) tensors and class indices."""

    def __init__(self, samples: Sequence[Sample], labels: Sequence[int], config: PreprocessConfig,
                 augment: tuple[str, ...] = ()) -> None:
        self.samples = list(samples)
        self.labels = list(labels)
        self.config = config
        self.augment = augment
        self.transform = _augmentation(augment, config)

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        side = max(self.config.scale_size)
        image: Image.Image = load_image(self.samples[index].path, min_size=(side, side))
        if self.transform is not None:
            image = self.transform(image)
        if "crop" in self.augment:
            array = np.asarray(image, dtype=np.uint8)
        else:
            array = resize_and_crop(image, self.config)
        return torch.from_numpy(np.array(array, dtype=np.uint8)), self.labels[index]
