"""Data: finding labeled images, decoding them robustly, and preprocessing config."""

from graft.data.dataset import (
    SPLITS,
    ImageDataset,
    Sample,
    assign_splits,
    compute_splits,
    iter_image_files,
    scan_dataset,
    split_fraction,
)
from graft.data.images import (
    IMAGE_EXTENSIONS,
    is_image_file,
    load_for_network,
    load_for_networks,
    load_image,
    to_rgb,
)
from graft.data.preprocess import PreprocessConfig, resize_and_crop

__all__ = [
    "IMAGE_EXTENSIONS",
    "SPLITS",
    "ImageDataset",
    "PreprocessConfig",
    "Sample",
    "assign_splits",
    "compute_splits",
    "is_image_file",
    "iter_image_files",
    "load_for_network",
    "load_for_networks",
    "load_image",
    "resize_and_crop",
    "scan_dataset",
    "split_fraction",
    "to_rgb",
]
