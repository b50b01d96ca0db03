"""Restormer with architectural gain constraints (the catalog's ``train_production.py``).

The network does not paint the output; it predicts a per-pixel, per-channel gain that multiplies the
as-shot photo, and the gain's range is fixed by the region: over-exposed (window) pixels may only be
darkened, gain in [0.3, 1.0], interior pixels only brightened, gain in [1.0, 3.0]. A model that
brightens a blown-out window or darkens a dim room is then impossible by construction, whatever the
training data or loss. The region comes from the input's luma with the window loss's threshold and
softness, and the allowed range blends across a window's edge.
"""
import math

import torch

from losses.colorspace import luminance
from losses.window import WINDOW_SOFTNESS, WINDOW_THRESHOLD

from .restormer import Restormer

WINDOW_GAIN = (0.3, 1.0)
INTERIOR_GAIN = (1.0, 3.0)
# At zero logits the gain sits this fraction of its range away from the bound nearest to 1 (identity),
# where the sigmoid still has a useful slope: training starts close to the input photo.
IDENTITY_MARGIN = 0.05


def _check_range(name: str, bounds) -> tuple:
    low, high = (float(b) for b in bounds)
    if not 0 <= low < high:
        raise ValueError(f"{name} must be (low, high) with 0 <= low < high, got {list(bounds)}")
    return low, high


def window_region(rgb: torch.Tensor, threshold: float = WINDOW_THRESHOLD,
                  softness: float = WINDOW_SOFTNESS) -> torch.Tensor:
    """The window share of each pixel, (N, 1, H, W): a linear ramp of the luma Y,
    m = clamp((Y - threshold) / (4 softness) + 1/2, 0, 1).

    Exactly 1 from Y = threshold + 2 softness up and exactly 0 from threshold - 2 softness down, with
    the slope of :func:`losses.window.overexposure_mask` at the threshold. That sigmoid itself would not
    do: it never reaches 0 or 1, so the blended bounds would leak -- a pixel of luma 0.9 could be
    brightened by 45% with the defaults. Outside the ramp every pixel gets exactly its region's range.
    """
    return ((luminance(rgb) - threshold) / (4.0 * softness) + 0.5).clamp(0.0, 1.0)


def _zero_logit_offset(low: float, high: float) -> float:
    """The logit offset that puts sigmoid(0 + offset) at the gain nearest 1 within the range (with a margin)."""
    position = min(max((1.0 - low) / (high - low), IDENTITY_MARGIN), 1.0 - IDENTITY_MARGIN)
    return math.log(position / (1.0 - position))


class GainRestormer(Restormer):
    """A :class:`models.restormer.Restormer` whose output is a bounded gain map applied to the input.

    With z = Restormer(x) - x[:, :3] (the logits: the backbone's global residual removed) and
    m = :func:`window_region` of x (``threshold``, ``softness``):

        g_window = lo_w + (hi_w - lo_w) sigmoid(z + o_w),   g_interior = lo_i + (hi_i - lo_i) sigmoid(z + o_i)
        gain = m g_window + (1 - m) g_interior,              output = clamp(x[:, :3] gain, 0, 1)

    so every pixel's gain lies in [m lo_w + (1 - m) lo_i, m hi_w + (1 - m) hi_i]: exactly [lo_w, hi_w] for
    window pixels (m = 1) and [lo_i, hi_i] for interior ones (m = 0). The offsets o put the
    zero-logit gain near identity. Parameters are exactly Restormer's (same names and shapes), so
    Restormer weights load into it with ``strict=True``. Arguments: Restormer's (3 output channels)
    plus the two gain ranges and the window mask's threshold and softness.
    """

    def __init__(self, *args, window_gain=WINDOW_GAIN, interior_gain=INTERIOR_GAIN,
                 threshold: float = WINDOW_THRESHOLD, softness: float = WINDOW_SOFTNESS, **restormer_kwargs):
        super().__init__(*args, **restormer_kwargs)
        if self.out_channels != 3 or self.dual_pixel_task:
            raise ValueError("GainRestormer predicts an RGB gain: it needs out_channels=3 and no dual_pixel_task")
        if softness <= 0:
            raise ValueError(f"GainRestormer softness must be > 0, got {softness}")
        self.window_gain = _check_range("window_gain", window_gain)
        self.interior_gain = _check_range("interior_gain", interior_gain)
        self.threshold, self.softness = threshold, softness
        self.window_offset = _zero_logit_offset(*self.window_gain)
        self.interior_offset = _zero_logit_offset(*self.interior_gain)

    def gain(self, x: torch.Tensor) -> torch.Tensor:
        """The per-pixel RGB gain map, (N, 3, H, W), within the region's bounds."""
        rgb = x[:, :3]
        logits = (super().forward(x) - rgb).float()
        window_mask = window_region(rgb, self.threshold, self.softness)
        (window_low, window_high), (interior_low, interior_high) = self.window_gain, self.interior_gain
        window_gain = window_low + (window_high - window_low) * torch.sigmoid(logits + self.window_offset)
        interior_gain = (interior_low
                         + (interior_high - interior_low) * torch.sigmoid(logits + self.interior_offset))
        return window_mask * window_gain + (1.0 - window_mask) * interior_gain

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x[:, :3].float() * self.gain(x)).clamp(0.0, 1.0)
