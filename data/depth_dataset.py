"""Depth maps for the datasets of the depth-feature recipes: computed once per image file, cached on disk,
and cropped and flipped together with the RGB.

:class:`DepthCache` keeps each image's depth as a ``.npy`` file; it is handed the depth network,
already built (``models.depth.DepthEstimator``, loaded by ``utils.features.load_depth_model``), as a
function. :func:`with_precomputed_depth` fills it before training and wraps the training and
validation sets as :class:`DepthPairedDataset`, whose samples carry ``'depth'``.
"""
from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from .dataset import PairedDataset
from .io import atomic_destination, pixels_to_float, read_image


def _as_rgb_batch(rgb_full_image: np.ndarray | torch.Tensor) -> torch.Tensor:
    """(1, 3, H, W) float32 tensor from numpy HWC or a torch (3, H, W) / (1, 3, H, W) tensor."""
    if isinstance(rgb_full_image, np.ndarray):
        if rgb_full_image.ndim != 3 or rgb_full_image.shape[2] != 3:
            raise ValueError(f"numpy image must be HWC RGB, got shape {rgb_full_image.shape}")
        return torch.from_numpy(np.ascontiguousarray(rgb_full_image, dtype=np.float32)).permute(2, 0, 1)[None]
    batch = rgb_full_image if rgb_full_image.ndim == 4 else rgb_full_image[None]
    if batch.shape[0] != 1 or batch.shape[1] != 3:
        raise ValueError(f"torch image must be (3, H, W) or (1, 3, H, W), got {tuple(rgb_full_image.shape)}")
    return batch.float()


class DepthCache:
    """Depth maps computed once per image file and kept on disk as ``.npy`` (float16, H x W).

    The file name hashes (absolute image path, file size, mtime, model_key), so editing or replacing
    an image, or switching models, makes a new entry instead of reusing a stale one. Depth is
    computed on the full image (before random crops), so crops and flips are applied to RGB and
    depth together afterwards. Writes are atomic (temp file + rename), so DataLoader workers can share
    a cache directory; :meth:`precompute` fills it up front, which keeps the model out of the workers.

    cache_dir: created if missing. model_key: identifies the depth model (``DepthEstimator.model_key``).
    estimator: callable (1, 3, H, W) in [0, 1] -> (1, 1, H, W) depth, called only on a miss.
    ``hits`` / ``misses`` count lookups in this process.
    """

    def __init__(
        self,
        cache_dir: str | os.PathLike,
        model_key: str,
        estimator: Callable[[torch.Tensor], torch.Tensor],
    ):
        self.cache_dir = Path(cache_dir)
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        self.model_key = model_key
        self.estimator = estimator
        self.hits = 0
        self.misses = 0

    def entry_path(self, image_path: str | os.PathLike) -> Path:
        """The cache file for the image as it is now on disk."""
        resolved = Path(image_path).resolve()
        stat = resolved.stat()
        identity = f"{resolved}|{stat.st_size}|{stat.st_mtime_ns}|{self.model_key}"
        return self.cache_dir / f"{hashlib.sha256(identity.encode()).hexdigest()[:32]}.npy"

    def get_or_compute(
        self, image_path: str | os.PathLike, rgb_full_image: np.ndarray | torch.Tensor
    ) -> np.ndarray:
        """Depth (H, W) float32 in [0, 1], far = 1, for the image at ``image_path``.

        rgb_full_image: that image's full RGB in [0, 1], numpy HWC or torch (3, H, W) / (1, 3, H, W).
        Read from disk when cached with the same height and width; otherwise computed with the
        estimator and stored. Values are float16-rounded either way, so a hit returns exactly what
        the miss returned.
        """
        rgb = _as_rgb_batch(rgb_full_image)
        entry = self.entry_path(image_path)
        if entry.is_file():
            cached = np.load(entry)
            if cached.shape == tuple(rgb.shape[-2:]):
                self.hits += 1
                return cached.astype(np.float32)
        self.misses += 1
        depth = self.estimator(rgb)[0, 0].float().cpu().numpy().astype(np.float16)
        with atomic_destination(entry) as tmp, open(tmp, "wb") as handle:  # full disk: one clear line
            np.save(handle, depth)
        return depth.astype(np.float32)

    def precompute(
        self,
        image_paths: Iterable[str | os.PathLike],
        load_rgb: Callable[[str | os.PathLike], np.ndarray | torch.Tensor] = read_image,
        progress: bool = True,
    ) -> None:
        """Fill the cache for every image not cached yet, with a progress bar.

        load_rgb must load images exactly as the training dataset does (same orientation and size),
        since the cached map must line up with the RGB it is cropped with; the default is the
        project's ``data.io.read_image``.
        """
        paths = list(image_paths)
        for image_path in tqdm(paths, desc="depth cache", unit="image", disable=not progress):
            # An existing entry is trusted here so a filled cache costs no image decoding;
            # get_or_compute still checks its size against the image at training time.
            if self.entry_path(image_path).is_file():
                self.hits += 1
                continue
            self.get_or_compute(image_path, load_rgb(image_path))


def _depth_not_precomputed(rgb):
    raise RuntimeError("a depth map is missing from the depth cache although every image's depth was "
                       "computed before training: was an image file replaced during training?")


class DepthPairedDataset(PairedDataset):
    """:class:`data.dataset.PairedDataset` whose samples also hold ``'depth'`` (1, h, w) in [0, 1].

    The depth of a pair's input image comes from ``depth_cache`` (a :class:`DepthCache`),
    computed on the full image. It travels through PairedDataset's crop, padding and flips as a 4th
    input channel (they treat channels alike), so the depth is pixel-aligned with the RGB crop by
    construction, whatever the crop or flip, and is split off again at the end.
    ``dataset_kwargs``: PairedDataset's ``crop``, ``augment``, ``center_crop``, ``cache``.
    """

    def __init__(self, pairs, depth_cache, **dataset_kwargs):
        super().__init__(pairs, **dataset_kwargs)
        self.depth_cache = depth_cache

    @classmethod
    def like(cls, dataset: PairedDataset, depth_cache) -> "DepthPairedDataset":
        """The same pairs, crop, augmentation and caching as ``dataset``, plus depth."""
        return cls(dataset.pairs, depth_cache, crop=dataset.crop, augment=dataset.augment,
                   center_crop=dataset.center_crop, cache=dataset.cache)

    def _load(self, index):
        images = {key: pixels_to_float(image) for key, image in super()._load(index).items()}
        depth = self.depth_cache.get_or_compute(self.pairs[index].input, images["input"])
        images["input"] = np.concatenate([images["input"], depth[..., None]], axis=2)
        return images

    def __getitem__(self, key):
        sample = super().__getitem__(key)
        rgb_and_depth = sample["input"]
        sample["input"], sample["depth"] = rgb_and_depth[:3], rgb_and_depth[3:]
        return sample


def with_precomputed_depth(train_set: PairedDataset, val_set: PairedDataset, depth_cache,
                           progress: bool = True):
    """Fill ``depth_cache`` for every input image of both sets, then wrap them as DepthPairedDatasets.

    The wrapped sets read the cache only (their cache has no estimator), so the depth model never
    runs, nor is copied, in DataLoader workers, and can be freed once this returns.
    """
    depth_cache.precompute([pair.input for pair in train_set.pairs + val_set.pairs], progress=progress)
    read_only = type(depth_cache)(depth_cache.cache_dir, depth_cache.model_key, _depth_not_precomputed)
    return DepthPairedDataset.like(train_set, read_only), DepthPairedDataset.like(val_set, read_only)
