"""Per-pixel input features that are stacked onto RGB for the multi-feature / depth-aware models.

Every feature is a batched torch function: it takes ``rgb`` of shape (N, 3, H, W) with values in
[0, 1] and returns a map of shape (N, 1, H, W) with values in [0, 1], on the same device and with the
same dtype as its input. All of them are differentiable with finite gradients everywhere (including
all-black and all-white images), so they can sit inside a training graph.

Depth convention (for every depth map in this project, MiDaS and proxy alike): **0 = near, 1 = far**.

The model's extra input channels are described by a *feature spec*: a tuple of feature names, in
channel order, appended after RGB. :func:`build_inputs` is the single place where a spec is turned
into a network input; training scripts and ``enhance.py`` both call it, so a model sees at inference
exactly what it saw in training. Checkpoints store the spec (as a list) and
:func:`parse_feature_spec` turns it back into a validated tuple.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torchvision.transforms.v2.functional import gaussian_blur

from losses import colorspace

# Sobel response of a full-range (0 -> 1) luminance step: 1 + 2 + 1. Dividing by it maps such an
# edge to 1 whatever the image, unlike a per-image max, so edge values compare across images.
EDGE_SCALE = 4.0

# Proxy depth: Gaussian blur applied to the cues so the proxy describes regions, not pixels. Fixed in
# pixels (not a fraction of the image size) so a training crop and the full image it came from see
# the same blur.
PROXY_BLUR_KERNEL = 15
PROXY_BLUR_SIGMA = 4.0
# Blurred edge magnitude at (and above) which a region counts as fully textured (near).
PROXY_TEXTURE_SCALE = 0.2
# Weights of the proxy's cues (brightness, neutrality, smoothness, height in frame); they sum to 1 so
# the proxy stays in [0, 1] without any rescaling.
PROXY_WEIGHTS = {"brightness": 0.45, "neutrality": 0.2, "smoothness": 0.2, "height": 0.15}

# Keeps the gradient of sqrt finite on flat regions; the features run in float32 so 1e-12 is
# representable.
_EDGE_EPS = 1e-12


def _check_rgb(rgb: torch.Tensor) -> None:
    if rgb.ndim != 4 or rgb.shape[1] != 3:
        raise ValueError(f"rgb must have shape (N, 3, H, W), got {tuple(rgb.shape)}")


def luminance(rgb: torch.Tensor) -> torch.Tensor:
    """Rec. 709 luma of an RGB batch: ``0.2126 R + 0.7152 G + 0.0722 B``.

    :func:`losses.colorspace.luminance` (computed in float32), returned in ``rgb``'s dtype. The
    weights apply to the values as given. Photos here are sRGB-encoded (gamma-compressed), so this
    is luma, a perceptual proxy for luminance, not linear-light luminance; that is what the other
    features want (it tracks how bright a region looks).

    rgb: (N, 3, H, W) in [0, 1]. Returns (N, 1, H, W) in [0, 1].
    """
    _check_rgb(rgb)
    return colorspace.luminance(rgb).to(rgb.dtype)


def saturation(rgb: torch.Tensor) -> torch.Tensor:
    """HSV saturation ``(max - min) / max(max, 1e-3)`` over the channels; 0 where the pixel is black.

    The S channel of :func:`losses.colorspace.rgb_to_hsv` (computed in float32), returned in
    ``rgb``'s dtype. Grey pixels give 0 and pure primaries give 1. The floor of the denominator is
    below one 8-bit step, so 8-bit pixels are exact, and keeps value and gradient finite at and near
    black; black itself gives exactly 0 (max - min is 0 there too).

    rgb: (N, 3, H, W) in [0, 1]. Returns (N, 1, H, W) in [0, 1].
    """
    _check_rgb(rgb)
    return colorspace.rgb_to_hsv(rgb)[:, 1:2].clamp(0.0, 1.0).to(rgb.dtype)


@functools.lru_cache(maxsize=16)
def _sobel_kernels(device: torch.device) -> torch.Tensor:
    """The two 3x3 Sobel kernels as a (2, 1, 3, 3) float32 tensor, built once per device.

    Hand-written: torchvision has no Sobel filter and OpenCV's does not run on batched tensors or
    propagate gradients.
    """
    horizontal = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]])
    return torch.stack([horizontal, horizontal.t()]).unsqueeze(1).to(device)


def _edge_from_luminance(luma: torch.Tensor) -> torch.Tensor:
    # Convolution runs in float32 outside autocast: in half precision the tiny epsilon that keeps
    # sqrt's gradient finite underflows.
    with torch.autocast(device_type=luma.device.type, enabled=False):
        padded = F.pad(luma.float(), (1, 1, 1, 1), mode="replicate")  # no false edges at borders
        gradients = F.conv2d(padded, _sobel_kernels(luma.device))
        squared_norm = gradients.square().sum(dim=1, keepdim=True)
        magnitude = (squared_norm + _EDGE_EPS).sqrt() - math.sqrt(_EDGE_EPS)
        return (magnitude / EDGE_SCALE).clamp(0.0, 1.0).to(luma.dtype)


def edge_magnitude(rgb: torch.Tensor) -> torch.Tensor:
    """Sobel gradient magnitude of :func:`luminance`, on a fixed scale.

    ``edge = clamp(sqrt(Gx^2 + Gy^2) / EDGE_SCALE, 0, 1)`` with the unnormalised 3x3 Sobel kernels
    and ``EDGE_SCALE = 4``: a sharp black-to-white step reads 1, flat regions read 0. The scale is
    fixed (not the per-image maximum) so values compare across images and between a training crop
    and its full image. Borders are replicate-padded, so the image frame adds no edges. Values are
    per pixel, so they depend on resolution: train and infer at the same resolution.

    rgb: (N, 3, H, W) in [0, 1]. Returns (N, 1, H, W) in [0, 1].
    """
    return _edge_from_luminance(luminance(rgb))


def _proxy_depth_from_cues(luma: torch.Tensor, sat: torch.Tensor, edge: torch.Tensor) -> torch.Tensor:
    cues = gaussian_blur(
        torch.cat([luma, sat, edge], dim=1), [PROXY_BLUR_KERNEL] * 2, [PROXY_BLUR_SIGMA] * 2
    )
    blurred_luma, blurred_sat, blurred_edge = cues[:, 0:1], cues[:, 1:2], cues[:, 2:3]
    height = luma.shape[-2]
    # Row centres as a fraction of the height: 1 at the top row, 0 at the bottom row.
    height_in_frame = torch.linspace(1.0, 0.0, height, device=luma.device, dtype=luma.dtype).view(1, 1, height, 1)
    smoothness = 1.0 - (blurred_edge / PROXY_TEXTURE_SCALE).clamp(0.0, 1.0)
    proxy = (
        PROXY_WEIGHTS["brightness"] * blurred_luma
        + PROXY_WEIGHTS["neutrality"] * (1.0 - blurred_sat)
        + PROXY_WEIGHTS["smoothness"] * smoothness
        + PROXY_WEIGHTS["height"] * height_in_frame
    )
    return proxy.clamp(0.0, 1.0)


def proxy_depth(rgb: torch.Tensor) -> torch.Tensor:
    """A depth stand-in from brightness, colour, texture and position; 0 = near, 1 = far.

    Windows and sky in interior photos are bright, washed-out (low saturation) and smooth, and sit
    higher in the frame than the floor in front of the camera; the proxy scores exactly that::

        L, S, E = luminance, saturation, edge_magnitude          (each in [0, 1])
        Lb, Sb, Eb = gaussian_blur([L, S, E], kernel 15, sigma 4)   (region-level cues)
        y = 1 at the top row ... 0 at the bottom row
        proxy = 0.45 Lb + 0.2 (1 - Sb) + 0.2 (1 - clamp(Eb / 0.2, 0, 1)) + 0.15 y

    The weights sum to 1, so the proxy is in [0, 1] without per-image rescaling (a crop and its full
    image agree, except for ``y``, which is relative to the tensor given: a random crop sees its own
    top and bottom). It is a heuristic, not a depth estimate: a bright white wall also reads far.

    rgb: (N, 3, H, W) in [0, 1], H and W at least 8 (the blur reflects 7 pixels). Returns (N, 1, H, W) in [0, 1].
    """
    luma = luminance(rgb)
    return _proxy_depth_from_cues(luma, saturation(rgb), _edge_from_luminance(luma))


# Feature names accepted in a spec. 'depth' is the precomputed, normalised MiDaS depth (see
# models.depth); every other feature is computed from RGB on the fly.
FEATURE_NAMES = ("depth", "proxy_depth", "edge", "saturation", "luminance")

# The specs the training scripts use, keyed by script variant (train_<key>.py).
FEATURE_SPECS: dict[str, tuple[str, ...]] = {
    "midas_depth": ("depth", "edge", "saturation"),
    "multi_feature": ("proxy_depth", "edge", "saturation"),
    "depth_aware": ("depth",),
}


def parse_feature_spec(spec: Sequence[str]) -> tuple[str, ...]:
    """Validate a feature spec (tuple or list of names, e.g. read back from a checkpoint).

    Returns it as a tuple. Raises ValueError naming the accepted features for an unknown name, a
    repeated name, or a bare string (a common slip for a one-feature spec: write ``('depth',)``).
    """
    if isinstance(spec, str):
        raise ValueError(f"feature spec must be a tuple of names such as ('depth',), got the string {spec!r}")
    names = tuple(spec)
    unknown = [name for name in names if name not in FEATURE_NAMES]
    if unknown:
        raise ValueError(f"unknown feature(s) {unknown} in spec {names}; accepted: {', '.join(FEATURE_NAMES)}")
    if len(set(names)) != len(names):
        raise ValueError(f"feature spec {names} repeats a feature")
    return names


def num_input_channels(spec: Sequence[str]) -> int:
    """Network input channels for a spec: 3 (RGB) plus one per feature."""
    return 3 + len(parse_feature_spec(spec))


def needs_depth(spec: Sequence[str]) -> bool:
    """Whether the spec needs a precomputed depth map (a MiDaS / DPT model or a depth cache)."""
    return "depth" in parse_feature_spec(spec)


def build_inputs(rgb: torch.Tensor, spec: Sequence[str], depth: torch.Tensor | None = None) -> torch.Tensor:
    """The network input for a feature spec: RGB followed by the features in spec order.

    rgb: (N, 3, H, W) in [0, 1]. depth: (N, 1, H, W) in [0, 1], 0 = near, 1 = far (from
    ``models.depth.DepthEstimator`` or its disk cache, ``data.depth_dataset.DepthCache``); required if
    and only if 'depth' is in the spec, and moved to rgb's device and dtype. Features that share
    intermediates (luminance, edges, saturation for the proxy) compute them once.

    Returns (N, 3 + len(spec), H, W).
    """
    names = parse_feature_spec(spec)
    _check_rgb(rgb)
    computed: dict[str, torch.Tensor] = {}

    def feature(name: str) -> torch.Tensor:
        if name not in computed:
            if name == "luminance":
                computed[name] = luminance(rgb)
            elif name == "saturation":
                computed[name] = saturation(rgb)
            elif name == "edge":
                computed[name] = _edge_from_luminance(feature("luminance"))
            elif name == "proxy_depth":
                computed[name] = _proxy_depth_from_cues(feature("luminance"), feature("saturation"), feature("edge"))
            else:
                computed[name] = _checked_depth(depth, rgb, names)
        return computed[name]

    return torch.cat([rgb, *(feature(name) for name in names)], dim=1)


def _checked_depth(depth: torch.Tensor | None, rgb: torch.Tensor, names: tuple[str, ...]) -> torch.Tensor:
    if depth is None:
        raise ValueError(
            f"feature spec {names} includes 'depth': pass the precomputed depth map (N, 1, H, W) "
            "from models.depth.DepthEstimator (or data.depth_dataset.DepthCache) as build_inputs(..., depth=...)"
        )
    expected = (rgb.shape[0], 1, *rgb.shape[2:])
    if tuple(depth.shape) != expected:
        raise ValueError(f"depth must have shape {expected} to match rgb, got {tuple(depth.shape)}")
    return depth.to(device=rgb.device, dtype=rgb.dtype)
