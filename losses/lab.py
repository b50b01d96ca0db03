"""Colour losses in CIELAB, the colour space built so that equal distances look about equally different."""
import torch.nn.functional as F
from torch import nn

from .colorspace import delta_e76, rgb_to_lab

# LAB distances are divided by this so the terms sit on L1's scale (black vs white: 1).
LAB_SCALE = 100.0
COLOR_SCALES = (1, 2, 4, 8)


class DeltaELoss(nn.Module):
    """L = mean_p dE76(Lab(pred_p), Lab(target_p)) / 100: the perceptual colour difference per pixel.

    dE76 = :func:`losses.colorspace.delta_e76` (Euclidean LAB distance; ~2.3 is a just-noticeable
    difference). Black against white gives L = 1.
    """

    def forward(self, pred, target, inp=None):
        return delta_e76(rgb_to_lab(pred), rgb_to_lab(target)).mean() / LAB_SCALE


class MultiScaleColorLoss(nn.Module):
    """L = (1/S) sum_s mean |P_s(ab(pred)) - P_s(ab(target))| / 100 over the scales s.

    ab = the LAB chroma channels (lightness left out: the pixel losses cover it) and P_s an s x s
    average pool. At scale 1 this compares every pixel's colour; at coarse scales the regional mean
    colour -- the colour cast a viewer notices -- which pixel noise cannot mask. Images must be at least
    max(scales) pixels on a side.
    """

    def __init__(self, scales=COLOR_SCALES):
        super().__init__()
        if not scales or any(int(s) < 1 for s in scales):
            raise ValueError(f"MultiScaleColorLoss scales must be integers >= 1, got {scales}")
        self.scales = tuple(int(s) for s in scales)

    def forward(self, pred, target, inp=None):
        pred_ab, target_ab = rgb_to_lab(pred)[:, 1:], rgb_to_lab(target)[:, 1:]
        loss = 0.0
        for scale in self.scales:
            if scale > 1:
                pred_pooled, target_pooled = F.avg_pool2d(pred_ab, scale), F.avg_pool2d(target_ab, scale)
            else:
                pred_pooled, target_pooled = pred_ab, target_ab
            loss = loss + (pred_pooled - target_pooled).abs().mean()
        return loss / (len(self.scales) * LAB_SCALE)
