"""Images for fine-tuning: augmentation on the CPU side, producing the same uint8 input the
exported graph takes, so training and inference share one preprocessing path."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from graft.data.augment import augment_for_network
from graft.data.dataset import Sample
from graft.data.images import decode_image
from graft.data.preprocess import PreprocessConfig
from graft.inference.images import draft_size, preprocess

__all__ = ["TrainingImages"]


class TrainingImages(torch.utils.data.Dataset):
    """Labeled images as ``uint8`` (H, W, 3) tensors and class indices, for a DataLoader.

    Without augmentation an image goes through :func:`graft.inference.images.preprocess`, the
    prediction path itself; with it, the same decode (:func:`~graft.data.images.decode_image`
    at the same JPEG draft size) feeds a random view. Random views draw from a generator seeded
    by torch's RNG, so ``torch.manual_seed`` (and the DataLoader's per-worker seeds) make an
    epoch's augmentations reproducible.
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
        path = self.samples[index].path
        if self.augment:
            image = decode_image(path, min_size=draft_size([self.config]))
            rng = np.random.default_rng(int(torch.randint(0, 2**62, ()).item()))
            array = augment_for_network(image, self.config, self.augment, rng)
        else:
            array = preprocess(path, self.config)[0]
        return torch.from_numpy(np.array(array, dtype=np.uint8)), self.labels[index]
