"""Window-aware loss: extra L1 where the *as-shot input* is over-exposed (blown-out windows)."""
import torch
from torch import nn

from .colorspace import luminance

WINDOW_THRESHOLD = 0.85
WINDOW_SOFTNESS = 0.04


def overexposure_mask(inp: torch.Tensor, threshold: float = WINDOW_THRESHOLD,
                      softness: float = WINDOW_SOFTNESS) -> torch.Tensor:
    """Soft mask of over-exposed pixels, (N, 1, H, W) in (0, 1).

    m = sigmoid((Y(inp) - threshold) / softness) with Y the Rec.709 luma of the input: 0.5 at the
    threshold, ~0.92 at threshold + 0.1, ~0.08 at threshold - 0.1 (softness 0.04). Computed from the input, not
    the target, because the input is what tells where detail was clipped and must be recovered.
    """
    return torch.sigmoid((luminance(inp) - threshold) / softness)


class WindowAwareLoss(nn.Module):
    """L = sum(m * |pred - target|) / (C * max(sum(m), 1)) with m = :func:`overexposure_mask` (input).

    The mean absolute error over the (soft) over-exposed region only, so its size in the loss does not
    depend on how much of the photo is window; 0 when nothing is over-exposed (the floor of one pixel
    in the denominator keeps it finite).
    """

    def __init__(self, threshold: float = WINDOW_THRESHOLD, softness: float = WINDOW_SOFTNESS):
        super().__init__()
        self.threshold, self.softness = threshold, softness

    def forward(self, pred, target, inp):
        window_mask = overexposure_mask(inp, self.threshold, self.softness)
        abs_error = (pred.float() - target.float()).abs()
        return (window_mask * abs_error).sum() / (abs_error.shape[1] * window_mask.sum().clamp_min(1.0))
