"""A torch Dataset of aligned (input, target) photo pairs with reproducible crops and flips."""

import numpy as np
import torch

from data.io import pixels_to_float, read_pixels


def _crop_size(value, option):
    """None, an int or an (height, width) pair -> None or (height, width)."""
    if value is None:
        return None
    size = (value, value) if isinstance(value, int) else tuple(value)
    if len(size) != 2 or not all(isinstance(side, int) and side > 0 for side in size):
        raise ValueError(f"{option} must be a positive int or (height, width), got {value!r}")
    return size


def _reflect_pad_to(image, height, width):
    """Reflect-pad an HxWxC array (centred) so that it is at least height x width."""
    pad_height = max(height - image.shape[0], 0)
    pad_width = max(width - image.shape[1], 0)
    if not pad_height and not pad_width:
        return image
    padding = (
        (pad_height // 2, pad_height - pad_height // 2),
        (pad_width // 2, pad_width - pad_width // 2),
        (0, 0),
    )
    return np.pad(image, padding, mode="reflect")


def _to_tensor(image):
    """HxWx3 float32 array -> 3xHxW tensor owning its (contiguous) memory."""
    return torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1)))


class PairedDataset(torch.utils.data.Dataset):
    """Aligned (input, target) pairs as dict(input=3xHxW float32, target=3xHxW float32, name=str).

    Keys are an int index, or `(index, seed)` as yielded by `data.loaders.ResumableSampler`: then the
    random crop and augmentation are drawn from `np.random.default_rng(seed)` alone, so a sample is
    the same whichever worker process builds it. An int key draws them from fresh OS entropy. A key
    `(index, seed, crop)` (progressive patches, `data.loaders.PatchSchedule`) crops at `crop` instead.

    crop: int or (h, w): the same random window of both images; images smaller than it are first
        reflect-padded (both identically) up to its size.
    augment: one of the 8 flips / 90-degree rotations, chosen at random, applied to both images.
    center_crop: int or (h, w): deterministic centred window for validation, clamped to the image.
    cache: a `data.pixel_cache.PixelCache`, or None to decode the photos for every sample. With it
        each photo is decoded once, a crop reads only its rows from the memory-mapped pixels, and
        only the crop is converted to float.
    aligned: further images aligned with the pairs, ``{key: [one path per pair]}`` (e.g. a frozen
        backbone's outputs): each must have its pair's size, goes through the same crop, padding and
        augmentation, and comes out under ``key``.
    """

    def __init__(self, pairs, crop=None, augment=False, center_crop=None, cache=None, aligned=None):
        self.pairs = list(pairs)
        self.aligned = {key: list(paths) for key, paths in (aligned or {}).items()}
        for key, paths in self.aligned.items():
            if len(paths) != len(self.pairs):
                raise ValueError(f"aligned images '{key}': {len(paths)} paths for {len(self.pairs)} pairs")
        self.crop = _crop_size(crop, "crop")
        self.center_crop = _crop_size(center_crop, "center_crop")
        if self.crop is not None and self.center_crop is not None:
            raise ValueError("give either crop (training) or center_crop (validation), not both")
        self.augment = augment
        self.cache = cache

    def __len__(self):
        return len(self.pairs)

    def _load(self, index):
        """Pixels of pair `index` by key (input, target, the aligned images): uint8/uint16 arrays,
        memory-mapped when cached. Subclasses may return float32 arrays instead (a pipeline over whole
        photos); the crop is converted to float either way."""
        pair = self.pairs[index]
        paths = {"input": pair.input, "target": pair.target, **{key: paths[index] for key, paths in self.aligned.items()}}
        read = read_pixels if self.cache is None else self.cache.read
        images = {key: read(path) for key, path in paths.items()}
        for key, image in images.items():
            if image.shape != images["input"].shape:
                raise ValueError(
                    f"pair '{pair.name}': input '{pair.input}' is {images['input'].shape[0]}x{images['input'].shape[1]} "
                    f"but {key} '{paths[key]}' is {image.shape[0]}x{image.shape[1]} (height x width)"
                )
        return images

    def __getitem__(self, key):
        if isinstance(key, tuple):
            index, seed, crop = key if len(key) == 3 else (*key, None)
        else:
            index, seed, crop = key, None, None
        index = int(index)
        images = self._load(index)
        height, width = images["input"].shape[:2]
        crop = _crop_size(crop, "crop") or self.crop

        if crop is not None or self.augment:
            rng = np.random.default_rng(seed)
        if crop is not None:
            crop_height, crop_width = crop
            images = {k: _reflect_pad_to(image, crop_height, crop_width) for k, image in images.items()}
            height, width = images["input"].shape[:2]
            top = int(rng.integers(height - crop_height + 1))
            left = int(rng.integers(width - crop_width + 1))
            window = (slice(top, top + crop_height), slice(left, left + crop_width))
            images = {k: image[window] for k, image in images.items()}
        elif self.center_crop is not None:
            crop_height = min(self.center_crop[0], height)
            crop_width = min(self.center_crop[1], width)
            top = (height - crop_height) // 2
            left = (width - crop_width) // 2
            window = (slice(top, top + crop_height), slice(left, left + crop_width))
            images = {k: image[window] for k, image in images.items()}
        if self.augment:
            # 0-3: rotations by k * 90 degrees; 4-7: the same after a transpose (the dihedral group D4).
            variant = int(rng.integers(8))
            if variant >= 4:
                images = {k: image.transpose(1, 0, 2) for k, image in images.items()}
            images = {k: np.rot90(image, variant % 4) for k, image in images.items()}

        return {**{k: _to_tensor(pixels_to_float(image)) for k, image in images.items()}, "name": self.pairs[index].name}
