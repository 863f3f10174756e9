"""Data: finding labeled images and splitting them stably.

Decoding lives in :mod:`graft.data.images` (the one decode function, shared with prediction);
the preprocessing config in :mod:`graft.data.preprocess`.
"""

from graft.data.dataset import (
    IMAGE_EXTENSIONS,
    SPLITS,
    ImageDataset,
    Sample,
    assign_splits,
    check_output_dir,
    compute_splits,
    count_by_split,
    is_image_file,
    iter_image_files,
    scan_dataset,
    split_fraction,
)
from graft.data.preprocess import PreprocessConfig, resize_and_crop

__all__ = [
    "IMAGE_EXTENSIONS",
    "SPLITS",
    "ImageDataset",
    "PreprocessConfig",
    "Sample",
    "assign_splits",
    "check_output_dir",
    "compute_splits",
    "count_by_split",
    "is_image_file",
    "iter_image_files",
    "resize_and_crop",
    "scan_dataset",
    "split_fraction",
]
