"""Images for fine-tuning: augmentation on the CPU side, producing the same uint8 input the
exported graph takes, so training and inference share one preprocessing path."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from graft.data.augment import augment_for_network
from graft.data.dataset import Sample
from graft.data.images import load_image
from graft.data.preprocess import PreprocessConfig, resize_and_crop

__all__ = ["ImageDataset"]


class ImageDataset(torch.utils.data.Dataset):
    """Labeled images as ``uint8`` (H, W, 3) tensors and class indices.

    Random views draw from a generator seeded by torch's RNG, so ``torch.manual_seed`` (and the
    DataLoader's per-worker seeds) make an epoch's augmentations reproducible.
    """

    def __init__(self, samples: Sequence[Sample], labels: Sequence[int], config: PreprocessConfig,
                 augment: tuple[str, ...] = ()) -> None:
        self.samples = list(samples)
        self.labels = list(labels)
        self.config = config
        self.augment = augment

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        side = max(self.config.scale_size)
        image = load_image(self.samples[index].path, min_size=(side, side))
        if self.augment:
            rng = np.random.default_rng(int(torch.randint(0, 2**62, ()).item()))
            array = augment_for_network(image, self.config, self.augment, rng)
        else:
            array = resize_and_crop(image, self.config)
        return torch.from_numpy(np.array(array, dtype=np.uint8)), self.labels[index]
