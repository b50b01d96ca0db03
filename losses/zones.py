"""Adaptive exposure-zone loss: shadows / midtones / highlights split at per-image luminance percentiles.

Fixed luma thresholds (e.g. "window = luma > 0.85") misfire on photos shot darker or brighter than
the thresholds assume. Here every image sets its own: its shadows are its darkest ``shadow_percentile``
per cent of pixels and its highlights its brightest ``100 - highlight_percentile`` per cent, so the
zones follow each photo's exposure.
"""
import math

import torch
from torch import nn

from .colorspace import luminance

SHADOW_PERCENTILE = 25.0
HIGHLIGHT_PERCENTILE = 90.0
ZONE_SOFTNESS = 0.02
SHADOW_WEIGHT, MIDTONE_WEIGHT, HIGHLIGHT_WEIGHT = 1.5, 1.0, 2.0
# Percentiles are estimated from a strided subsample of at most about this many pixels per image:
# exact enough for a threshold, and it bounds the sort's cost and stays far below torch.quantile's
# input-size limit at any crop and batch size.
QUANTILE_SAMPLES = 65536


def percentile_thresholds(luma: torch.Tensor, quantiles: torch.Tensor) -> torch.Tensor:
    """Per-image quantiles of a (N, 1, H, W) map, shape (N, Q), for ``quantiles`` in [0, 1] (shape (Q,)).

    Linear interpolation between order statistics (torch.quantile's default, numpy's 'linear'),
    computed on every s-th row and column, s = ceil(sqrt(H W / QUANTILE_SAMPLES)) (s = 1 up to
    256x256 pixels). No host-device sync (torch.quantile checks q's range on the CPU only).
    """
    batch, _, height, width = luma.shape
    stride = max(1, math.ceil(math.sqrt(height * width / QUANTILE_SAMPLES)))
    samples = luma[:, 0, ::stride, ::stride].reshape(batch, -1).float()
    return torch.quantile(samples, quantiles.to(samples), dim=1).transpose(0, 1)


def exposure_zones(inp: torch.Tensor, quantiles: torch.Tensor, softness: float = ZONE_SOFTNESS) -> torch.Tensor:
    """Soft shadow / midtone / highlight masks of each image, (N, 3, H, W), summing to 1 per pixel.

    With Y the input's luma and (t_s, t_h) its per-image quantiles ``quantiles = (q_s, q_h)``:
    shadow = sigmoid((t_s - Y) / softness), highlight = sigmoid((Y - t_h) / softness) * (1 - shadow),
    midtone = 1 - shadow - highlight. The thresholds carry no gradient (the input is data).
    """
    luma = luminance(inp)
    thresholds = percentile_thresholds(luma, quantiles).detach()
    shadow_threshold = thresholds[:, 0].view(-1, 1, 1, 1)
    highlight_threshold = thresholds[:, 1].view(-1, 1, 1, 1)
    shadow = torch.sigmoid((shadow_threshold - luma) / softness)
    # (1 - shadow) keeps the masks a partition even where the two thresholds meet (a flat image).
    highlight = torch.sigmoid((luma - highlight_threshold) / softness) * (1.0 - shadow)
    return torch.cat([shadow, 1.0 - shadow - highlight, highlight], dim=1)


class AdaptiveZoneLoss(nn.Module):
    """L = sum_z w_z E_z over the zones z = shadows, midtones, highlights.

    E_z = sum(m_z |pred - target|) / (C max(sum m_z, 1)) with m_z = :func:`exposure_zones` of the
    input (per-image percentile thresholds): the mean absolute error inside zone z over the batch,
    so each zone counts by its weight whatever its size. Defaults weigh the highlights (windows)
    most and the shadows (dark interiors) next.
    """

    def __init__(self, shadow_percentile: float = SHADOW_PERCENTILE,
                 highlight_percentile: float = HIGHLIGHT_PERCENTILE, softness: float = ZONE_SOFTNESS,
                 shadow_weight: float = SHADOW_WEIGHT, midtone_weight: float = MIDTONE_WEIGHT,
                 highlight_weight: float = HIGHLIGHT_WEIGHT):
        super().__init__()
        if not 0 < shadow_percentile < highlight_percentile < 100:
            raise ValueError("AdaptiveZoneLoss needs 0 < shadow_percentile < highlight_percentile < 100, "
                             f"got {shadow_percentile} and {highlight_percentile}")
        if softness <= 0:
            raise ValueError(f"AdaptiveZoneLoss softness must be > 0, got {softness}")
        self.softness = softness
        self.register_buffer("quantiles", torch.tensor([shadow_percentile / 100, highlight_percentile / 100]),
                             persistent=False)
        self.register_buffer("zone_weights", torch.tensor([shadow_weight, midtone_weight, highlight_weight]),
                             persistent=False)

    def zones(self, inp: torch.Tensor) -> torch.Tensor:
        """The soft (shadow, midtone, highlight) masks of ``inp``, (N, 3, H, W)."""
        return exposure_zones(inp, self.quantiles, self.softness)

    def forward(self, pred, target, inp):
        masks = self.zones(inp)
        abs_error = (pred.float() - target.float()).abs().mean(dim=1, keepdim=True)
        zone_errors = (masks * abs_error).sum(dim=(0, 2, 3)) / masks.sum(dim=(0, 2, 3)).clamp_min(1.0)
        return (self.zone_weights * zone_errors).sum()
