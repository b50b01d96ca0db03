"""Monocular depth from MiDaS (DPT) models through ``transformers``, and a disk cache for it.

Models: ``Intel/dpt-hybrid-midas`` or ``Intel/dpt-large`` (``DPTForDepthEstimation``), loaded by
:func:`load_depth_model` from a local folder in ``save_pretrained`` format or from the local Hugging
Face cache; nothing is ever downloaded at run time. ``transformers`` is an optional extra
(``pip install -r requirements-extras.txt``); this module imports it only when a model is loaded.

Output convention, as for every depth map in the project (see ``data.features``): (N, 1, H, W) in
[0, 1] per image, **0 = near, 1 = far**.

Offline test path: :func:`tiny_dpt_config` builds a small (~120k parameters) randomly initialised DPT whose
``save_pretrained`` folder goes through exactly the same loading and inference code as a real one.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from data.features import normalize_depth
from data.io import read_image

# DPTImageProcessor's defaults, used when a model folder has no preprocessor_config.json.
DPT_DEFAULT_MEAN = (0.5, 0.5, 0.5)
DPT_DEFAULT_STD = (0.5, 0.5, 0.5)

# Files that can hold DPTForDepthEstimation weights in a save_pretrained folder.
_WEIGHT_FILES = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
)


def _import_transformers():
    try:
        import transformers
    except ImportError as error:
        raise ImportError(
            "MiDaS depth needs the optional 'transformers' package: pip install -r requirements-extras.txt"
        ) from error
    return transformers


def _missing_weights_error(name_or_path: str, reason: str) -> FileNotFoundError:
    return FileNotFoundError(
        f"depth model {name_or_path!r}: {reason}; on a machine with internet run "
        f"`hf download Intel/dpt-hybrid-midas --local-dir DIR` (or Intel/dpt-large), copy DIR here "
        f"and pass --depth-model DIR"
    )


def _resolve_model_folder(name_or_path: str) -> Path:
    """A local folder holding the model: the path itself, or the hub id's snapshot in the local cache."""
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        folder = path
    elif path.exists():
        raise _missing_weights_error(name_or_path, "is a file, expected a save_pretrained folder")
    else:
        from huggingface_hub import snapshot_download
        from huggingface_hub.errors import HFValidationError, LocalEntryNotFoundError

        try:
            folder = Path(snapshot_download(name_or_path, local_files_only=True))
        except (LocalEntryNotFoundError, HFValidationError, FileNotFoundError):
            raise _missing_weights_error(
                name_or_path, "no such folder, and not in the local Hugging Face cache"
            ) from None
    if not (folder / "config.json").is_file() or not any((folder / name).is_file() for name in _WEIGHT_FILES):
        raise _missing_weights_error(name_or_path, f"{folder} has no config.json and model weights")
    return folder


def _model_key(folder: Path) -> str:
    """Identifies the model for the depth cache: its config files and the weights' sizes and mtimes.

    Independent of where the folder lives; replacing the weights (new mtime) invalidates the cache.
    """
    digest = hashlib.sha256()
    for name in ("config.json", "preprocessor_config.json"):
        if (folder / name).is_file():
            digest.update((folder / name).read_bytes())
    for name in _WEIGHT_FILES:
        if (folder / name).is_file():
            stat = (folder / name).stat()
            digest.update(f"{name}:{stat.st_size}:{stat.st_mtime_ns}".encode())
    return digest.hexdigest()[:16]


def _normalisation(folder: Path) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """(mean, std) from the folder's image processor config if present, else DPT's defaults."""
    config_path = folder / "preprocessor_config.json"
    if not config_path.is_file():
        return DPT_DEFAULT_MEAN, DPT_DEFAULT_STD
    processor = json.loads(config_path.read_text())
    if not processor.get("do_normalize", True):
        return (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)
    mean = processor.get("image_mean", DPT_DEFAULT_MEAN)
    std = processor.get("image_std", DPT_DEFAULT_STD)
    return tuple(float(value) for value in mean), tuple(float(value) for value in std)


class DepthEstimator:
    """A DPT depth model plus its preprocessing: RGB (N, 3, H, W) in [0, 1] -> depth (N, 1, H, W).

    Per call: resize to the model's configured ``image_size`` (antialiased bicubic; the hybrid
    variant accepts only that size), normalise with ``image_mean`` / ``image_std``, predict MiDaS
    disparity, resize back to (H, W) bicubically, and :func:`data.features.normalize_depth` it per
    image to [0, 1] with 0 = near, 1 = far. Runs without gradients, in eval mode, on the model's
    device; the result comes back on the input's device as float32.

    model: a ``DPTForDepthEstimation``. model_key: identifies the weights for :class:`DepthCache`.
    autocast_dtype: e.g. ``torch.float16`` / ``torch.bfloat16`` to run the model under autocast;
    None runs it in the model's own dtype.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        image_mean: Iterable[float] = DPT_DEFAULT_MEAN,
        image_std: Iterable[float] = DPT_DEFAULT_STD,
        model_key: str = "",
        autocast_dtype: torch.dtype | None = None,
    ):
        self.model = model.eval()
        self.model_key = model_key
        self.image_mean = tuple(float(value) for value in image_mean)
        self.image_std = tuple(float(value) for value in image_std)
        self.autocast_dtype = autocast_dtype
        size = model.config.image_size
        self.image_size = (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))
        parameter = next(model.parameters())
        self.device = parameter.device
        # Kept on the model's device so a call makes no host-to-device copies besides the image.
        self._mean = torch.tensor(self.image_mean, dtype=parameter.dtype, device=self.device).view(1, 3, 1, 1)
        self._std = torch.tensor(self.image_std, dtype=parameter.dtype, device=self.device).view(1, 3, 1, 1)

    @torch.no_grad()
    def __call__(self, rgb: torch.Tensor) -> torch.Tensor:
        if rgb.ndim != 4 or rgb.shape[1] != 3:
            raise ValueError(f"rgb must have shape (N, 3, H, W), got {tuple(rgb.shape)}")
        height, width = rgb.shape[-2:]
        pixels = rgb.to(device=self.device, dtype=self._mean.dtype)
        resized = F.interpolate(pixels, size=self.image_size, mode="bicubic", align_corners=False, antialias=True)
        pixel_values = (resized.clamp(0.0, 1.0) - self._mean) / self._std
        with torch.autocast(
            device_type=self.device.type, dtype=self.autocast_dtype, enabled=self.autocast_dtype is not None
        ):
            disparity = self.model(pixel_values=pixel_values).predicted_depth
        disparity = F.interpolate(
            disparity.float().unsqueeze(1), size=(height, width), mode="bicubic", align_corners=False
        )
        return normalize_depth(disparity, from_disparity=True).to(rgb.device)


def load_depth_model(
    name_or_path: str, device: torch.device | str = "cpu", autocast_dtype: torch.dtype | None = None
) -> DepthEstimator:
    """Load a MiDaS / DPT depth model, never downloading; returns it wrapped in a :class:`DepthEstimator`.

    name_or_path: a folder in ``save_pretrained`` format (e.g. made by
    ``hf download Intel/dpt-hybrid-midas --local-dir DIR``), or a hub id such as
    ``Intel/dpt-hybrid-midas`` that is already in the local Hugging Face cache.
    The folder's ``preprocessor_config.json``, if any, sets the normalisation.

    Raises ImportError (naming requirements-extras.txt) without ``transformers``, and a one-line
    FileNotFoundError naming ``name_or_path`` and how to provide the weights when they are not here.
    """
    transformers = _import_transformers()
    folder = _resolve_model_folder(str(name_or_path))
    model = transformers.DPTForDepthEstimation.from_pretrained(str(folder), local_files_only=True)
    mean, std = _normalisation(folder)
    return DepthEstimator(
        model.to(device), mean, std, model_key=_model_key(folder), autocast_dtype=autocast_dtype
    )


def tiny_dpt_config(image_size: int = 32):
    """A tiny non-hybrid ``DPTConfig`` (hidden size 32, 4 layers, patch 8) that builds offline.

    For tests and for trying the depth pipeline without the real weights: save a randomly
    initialised ``DPTForDepthEstimation(tiny_dpt_config())`` with ``save_pretrained`` and load that
    folder with :func:`load_depth_model`, the same path a real model takes. Its depth is noise.
    image_size must be a multiple of the patch size, 8.
    """
    transformers = _import_transformers()
    return transformers.DPTConfig(
        hidden_size=32,
        num_hidden_layers=4,
        num_attention_heads=2,
        intermediate_size=64,
        image_size=image_size,
        patch_size=8,
        is_hybrid=False,
        backbone_out_indices=(0, 1, 2, 3),
        neck_hidden_sizes=(8, 16, 32, 32),
        fusion_hidden_size=16,
        # With the default 0.02 a random tiny model predicts ~1e-9 everywhere; 0.2 gives disparities
        # spread over hundreds to thousands, like real MiDaS output, so tests see a real depth range.
        initializer_range=0.2,
    )


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
        with tempfile.NamedTemporaryFile(dir=self.cache_dir, suffix=".tmp", delete=False) as handle:
            np.save(handle, depth)
        os.replace(handle.name, entry)
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
