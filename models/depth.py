"""Monocular depth from MiDaS (DPT) models through ``transformers``: the network with its pre- and post-processing.

Models: ``Intel/dpt-hybrid-midas`` or ``Intel/dpt-large`` (``DPTForDepthEstimation``), wrapped by
:class:`DepthEstimator` once built; ``utils.features.load_depth_model`` builds one from a local
folder (nothing is downloaded at run time) and ``data.depth_dataset.DepthCache`` keeps its maps on
disk. ``transformers`` is an optional extra (``pip install -r requirements-extras.txt``); this
module imports it only when a model is configured.

Output convention, as for every depth map in the project (see ``losses.depth_maps``): (N, 1, H, W) in
[0, 1] per image, **0 = near, 1 = far**.

Offline test path: :func:`tiny_dpt_config` builds a small (~120k parameters) randomly initialised DPT whose
``save_pretrained`` folder goes through exactly the same loading and inference code as a real one.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
import torch.nn.functional as F

from losses.depth_maps import normalize_depth

# DPTImageProcessor's defaults, used when a model folder has no preprocessor_config.json.
DPT_DEFAULT_MEAN = (0.5, 0.5, 0.5)
DPT_DEFAULT_STD = (0.5, 0.5, 0.5)


def import_transformers():
    try:
        import transformers
    except ImportError as error:
        raise ImportError(
            "MiDaS depth needs the optional 'transformers' package: pip install -r requirements-extras.txt"
        ) from error
    return transformers


class DepthEstimator:
    """A DPT depth model plus its preprocessing: RGB (N, 3, H, W) in [0, 1] -> depth (N, 1, H, W).

    Per call: resize to the model's configured ``image_size`` (antialiased bicubic; the hybrid
    variant accepts only that size), normalise with ``image_mean`` / ``image_std``, predict MiDaS
    disparity, resize back to (H, W) bicubically, and :func:`losses.depth_maps.normalize_depth` it per
    image to [0, 1] with 0 = near, 1 = far. Runs without gradients, in eval mode, on the model's
    device; the result comes back on the input's device as float32.

    model: a ``DPTForDepthEstimation``. model_key: identifies the weights for ``data.depth_dataset.DepthCache``.
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


def tiny_dpt_config(image_size: int = 32):
    """A tiny non-hybrid ``DPTConfig`` (hidden size 32, 4 layers, patch 8) that builds offline.

    For tests and for trying the depth pipeline without the real weights: save a randomly
    initialised ``DPTForDepthEstimation(tiny_dpt_config())`` with ``save_pretrained`` and load that
    folder with ``utils.features.load_depth_model``, the same path a real model takes. Its depth is noise.
    image_size must be a multiple of the patch size, 8.
    """
    transformers = import_transformers()
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
