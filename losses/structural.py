"""SSIM loss: the structural similarity of :func:`losses.ssim.ssim` (the one SSIM of the codebase) as a loss."""
import torch
from torch import nn

from .ssim import ssim


class SSIMLoss(nn.Module):
    """L = 1 - SSIM(pred, target), batch mean, in [0, 2] (0 for identical images).

    SSIM compares local means, contrasts and correlations (11x11 Gaussian window, sigma 1.5), so it
    rewards kept local contrast and texture that L1 alone under-weights. Images must be at least
    11x11 pixels.
    """

    def forward(self, pred, target, inp=None):
        # fp32 even under autocast: the local variances are differences of nearly equal moments,
        # which a half-precision convolution would cancel to noise.
        with torch.autocast(device_type=pred.device.type, enabled=False):
            return 1.0 - ssim(pred.float(), target.float())
