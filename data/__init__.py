"""Paired-image data: reading/writing photos, finding pairs in a --data folder, datasets and loaders."""

from data.dataset import PairedDataset
from data.io import (
    IMAGE_EXTENSIONS,
    ImageReadError,
    read_image,
    read_image_size,
    read_metadata,
    write_image,
)
from data.loaders import ResumableSampler, train_batches, val_loader
from data.pairs import (
    INPUT_ALIASES,
    TARGET_ALIASES,
    DataLayoutError,
    ImagePair,
    check_pairs,
    discover_pairs,
    resolve_datasets_pairs,
    split_pairs,
)

__all__ = [
    "IMAGE_EXTENSIONS",
    "INPUT_ALIASES",
    "TARGET_ALIASES",
    "DataLayoutError",
    "ImagePair",
    "ImageReadError",
    "PairedDataset",
    "ResumableSampler",
    "check_pairs",
    "discover_pairs",
    "read_image",
    "read_image_size",
    "read_metadata",
    "resolve_datasets_pairs",
    "split_pairs",
    "train_batches",
    "val_loader",
    "write_image",
]
