"""Window-aware loss: extra L1 where the *as-shot input* is over-exposed (blown-out windows)."""
import torch
from torch import nn

from .colorspace import luminance

WINDOW_THRESHOLD = 0.85
WINDOW_SOFTNESS = 0.04
# What the window term's sum is divided by (see WindowAwareLoss): the catalog's mean over the window
# region, or the mean over the whole image (issue 11: emphasis on windows without diluting the rest).
WINDOW_NORMALIZATIONS = ("region", "image")
WINDOW_NORMALIZATION_HELP = ("image: mean over the photo, so L1 + w x window = mean((1 + w m)|error|), interior "
                             "pixels keep weight 1; region: mean error over the windows alone (the catalog's)")


def check_window_normalization(normalization: str) -> str:
    if normalization not in WINDOW_NORMALIZATIONS:
        raise ValueError(f"window normalization must be one of {', '.join(WINDOW_NORMALIZATIONS)}, "
                         f"got {normalization!r}")
    return normalization


def overexposure_mask(inp: torch.Tensor, threshold: float = WINDOW_THRESHOLD,
                      softness: float = WINDOW_SOFTNESS) -> torch.Tensor:
    """Soft mask of over-exposed pixels, (N, 1, H, W) in (0, 1).

    m = sigmoid((Y(inp) - threshold) / softness) with Y the Rec.709 luma of the input: 0.5 at the
    threshold, ~0.92 at threshold + 0.1, ~0.08 at threshold - 0.1 (softness 0.04). Computed from the input, not
    the target, because the input is what tells where detail was clipped and must be recovered.
    """
    return torch.sigmoid((luminance(inp) - threshold) / softness)


class WindowAwareLoss(nn.Module):
    """L1 over the over-exposed pixels, m = :func:`overexposure_mask` (input), in one of two forms:

    - ``normalization="region"`` (the catalog's): L = sum(m |pred - target|) / (C max(sum(m), 1)), the
      mean absolute error over the (soft) window region only, so its size does not depend on how much
      of the photo is window; 0 when nothing is over-exposed (the one-pixel floor keeps it finite).
      Next to L1 it gives a window pixel 1 + w / (window share) times an interior pixel's weight
      (~6.5x at w = 0.5 and the demo data's 9 % windows) and takes that share of the update from
      the rest of the photo.
    - ``normalization="image"``: L = mean(m |pred - target|) over all pixels, so that
      L1 + w L = mean((1 + w m) |pred - target|): an interior pixel keeps weight 1 and a window
      pixel gets 1 + w, whatever the window share (issue 11, README "The saturation term").

    Both are L1 weighted by m in [0, 1]: every gradient is at most that of a per-pixel mean
    (region: 1 / (C max(sum(m), 1)); image: 1 / (N C H W)), finite at black and white alike.
    """

    def __init__(self, threshold: float = WINDOW_THRESHOLD, softness: float = WINDOW_SOFTNESS,
                 normalization: str = "region"):
        super().__init__()
        self.threshold, self.softness = threshold, softness
        self.normalization = check_window_normalization(normalization)

    def forward(self, pred, target, inp):
        window_mask = overexposure_mask(inp, self.threshold, self.softness)
        abs_error = (pred.float() - target.float()).abs()
        if self.normalization == "image":
            return (window_mask * abs_error).mean()
        return (window_mask * abs_error).sum() / (abs_error.shape[1] * window_mask.sum().clamp_min(1.0))
