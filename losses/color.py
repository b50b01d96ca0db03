"""Colour losses in HSV terms: the catalog's 'saturation/HSV colour' term."""
from torch import nn

from .colorspace import chroma_plane, rgb_to_hsv


class SaturationLoss(nn.Module):
    """L = mean |S(pred) - S(target)|, S = HSV saturation (max - min) / max.

    Plain L1 on RGB regresses towards muted colours; this term penalises lost (or excess) colourfulness
    directly.
    """

    def forward(self, pred, target, inp=None):
        return (rgb_to_hsv(pred)[:, 1] - rgb_to_hsv(target)[:, 1]).abs().mean()


class HSVLoss(nn.Module):
    """L = w_h |c(pred) - c(target)| + w_s |S(pred) - S(target)| + w_v |V(pred) - V(target)| (means).

    c is the chroma-plane vector (:func:`losses.colorspace.chroma_plane`): hue compared in proportion
    to chroma, smooth at grey and across the red wrap-around, unlike a difference of hue angles.
    """

    def __init__(self, hue_weight: float = 1.0, saturation_weight: float = 1.0, value_weight: float = 1.0):
        super().__init__()
        self.hue_weight, self.saturation_weight, self.value_weight = hue_weight, saturation_weight, value_weight

    def forward(self, pred, target, inp=None):
        hsv_pred, hsv_target = rgb_to_hsv(pred), rgb_to_hsv(target)
        hue_term = (chroma_plane(pred) - chroma_plane(target)).abs().mean()
        saturation_term = (hsv_pred[:, 1] - hsv_target[:, 1]).abs().mean()
        value_term = (hsv_pred[:, 2] - hsv_target[:, 2]).abs().mean()
        return (self.hue_weight * hue_term + self.saturation_weight * saturation_term
                + self.value_weight * value_term)
