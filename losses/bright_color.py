"""Bright-region colour losses: hue, chroma, RGB and histogram errors inside the bright parts of the photo.

Windows, sky and sunlit plants are bright in the as-shot photo and nearly colourless there (clipped
towards white); the edit gives them back their blue and green. Whole-image colour terms barely see
these regions, so these terms measure colour only inside them. They are four modules, not one, so
that :class:`losses.combined.CombinedLoss` weighs and logs each separately.

All four share the region: b = :func:`losses.window.overexposure_mask` of the input with a lower
threshold than the window loss (bright, not only clipped), and the chroma-plane vectors
u = chroma_plane(pred), v = chroma_plane(target) (:func:`losses.colorspace.chroma_plane`: hue is
their angle, chroma their length), |x|_eps = sqrt(|x|^2 + eps^2).
"""
import torch
from torch import nn

from .colorspace import chroma_plane
from .histogram import HISTOGRAM_BINS, HistogramLoss
from .window import overexposure_mask

BRIGHT_THRESHOLD = 0.7
BRIGHT_SOFTNESS = 0.05
# Chroma-plane vectors shorter than this have no meaningful hue; keeps the norms' gradients finite.
CHROMA_EPS = 1e-3


class BrightRegionLoss(nn.Module):
    """Base of the bright-region terms: holds the region's soft threshold."""

    def __init__(self, threshold: float = BRIGHT_THRESHOLD, softness: float = BRIGHT_SOFTNESS):
        super().__init__()
        if softness <= 0:
            raise ValueError(f"{type(self).__name__} softness must be > 0, got {softness}")
        self.threshold, self.softness = threshold, softness

    def bright_mask(self, inp: torch.Tensor) -> torch.Tensor:
        """b, the soft bright region of the input, (N, H, W) in (0, 1)."""
        return overexposure_mask(inp, self.threshold, self.softness)[:, 0]


def _chroma_vectors(pred, target):
    """u, v and their eps-lengths (N, H, W)."""
    pred_chroma, target_chroma = chroma_plane(pred), chroma_plane(target)
    pred_length = (pred_chroma.square().sum(dim=1) + CHROMA_EPS ** 2).sqrt()
    target_length = (target_chroma.square().sum(dim=1) + CHROMA_EPS ** 2).sqrt()
    return pred_chroma, target_chroma, pred_length, target_length


class BrightHueLoss(BrightRegionLoss):
    """L = sum_p b_p |v_p| (1 - cos(u_p, v_p)) / max(sum_p b_p |v_p|, eps), cos = <u, v> / (|u|_eps |v|_eps).

    The hue angle error in the bright region, weighted by the target's chroma: hue means nothing where
    the target is grey. 0 for the right hue at any chroma; 2 for the opposite hue.
    """

    def forward(self, pred, target, inp):
        pred_chroma, target_chroma, pred_length, target_length = _chroma_vectors(pred, target)
        cosine = (pred_chroma * target_chroma).sum(dim=1) / (pred_length * target_length)
        weights = self.bright_mask(inp) * (target_length - CHROMA_EPS)
        return (weights * (1.0 - cosine)).sum() / weights.sum().clamp_min(CHROMA_EPS)


class BrightChromaLoss(BrightRegionLoss):
    """L = sum_p b_p | |u_p|_eps - |v_p|_eps | / max(sum_p b_p, 1): lost (or excess) colourfulness."""

    def forward(self, pred, target, inp):
        _, _, pred_length, target_length = _chroma_vectors(pred, target)
        bright = self.bright_mask(inp)
        return (bright * (pred_length - target_length).abs()).sum() / bright.sum().clamp_min(1.0)


class BrightRGBLoss(BrightRegionLoss):
    """L = sum_p b_p |pred_p - target_p| / (3 max(sum_p b_p, 1)): L1 inside the bright region."""

    def forward(self, pred, target, inp):
        bright = self.bright_mask(inp)
        abs_error = (pred.float() - target.float()).abs().mean(dim=1)
        return (bright * abs_error).sum() / bright.sum().clamp_min(1.0)


class BrightHistogramLoss(BrightRegionLoss):
    """L = :class:`losses.histogram.HistogramLoss` of the pixels weighted by b: the bright region's
    per-channel value distribution (how much blue sky, how much white) must match the target's."""

    def __init__(self, threshold: float = BRIGHT_THRESHOLD, softness: float = BRIGHT_SOFTNESS,
                 bins: int = HISTOGRAM_BINS):
        super().__init__(threshold, softness)
        self.histogram = HistogramLoss(bins)

    def forward(self, pred, target, inp):
        return self.histogram(pred, target, weights=self.bright_mask(inp).unsqueeze(1))
