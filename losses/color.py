"""Colour losses in HSV terms: the catalog's 'saturation/HSV colour' term.

Two forms of the saturation comparison (``form=``):

- ``"weighted"`` (the default): L_S = mean( sg(v) |S(pred) - S(target)| ), v = clamp(V(pred), 0, 1)
  the HSV value of the prediction and sg() stop-gradient. S = (max - min) / max(max, 1e-3) has a
  gradient of size 1/V, so near black it is huge and follows sensor noise (the chroma of a pixel
  at V = 0.02 carries no visible colour); multiplying by the pixel's own value cancels that 1/V
  exactly: for pred in [0, 1] every channel's gradient is at most 1/(N H W), the size of a
  per-pixel mean's, from black to white. Colour is still compared as saturation (the catalog's intent), at full strength where it
  is visible (mid-tones, recovered windows) and fading out linearly into the shadows.
- ``"catalog"``: L_S = mean |S(pred) - S(target)|, the catalog's literal formula, kept to reproduce
  the original experiment. Measured on the demo data (issue 11, README "Saturation term"): with
  pred = the as-shot input, its mean per-pixel gradient is 14x L1's in the shadows (luma < 0.15;
  99th percentile 113x) and 4.7x in the mid-tones.
"""
from torch import nn

from .colorspace import chroma_plane, rgb_to_hsv

SATURATION_FORMS = ("weighted", "catalog")


def check_saturation_form(form: str) -> str:
    if form not in SATURATION_FORMS:
        raise ValueError(f"saturation form must be one of {', '.join(SATURATION_FORMS)}, got {form!r}")
    return form


def saturation_difference(hsv_pred, hsv_target, form: str = "weighted"):
    """Per-pixel saturation difference (N, H, W) of the given ``form`` (see the module docstring),
    from :func:`losses.colorspace.rgb_to_hsv` of the prediction and of the target."""
    difference = (hsv_pred[:, 1] - hsv_target[:, 1]).abs()
    if check_saturation_form(form) == "catalog":
        return difference
    return hsv_pred[:, 2].detach().clamp(0.0, 1.0) * difference


class SaturationLoss(nn.Module):
    """L = mean of :func:`saturation_difference`: value-weighted (default) or the catalog's plain
    mean |S(pred) - S(target)|, S = HSV saturation (max - min) / max.

    Plain L1 on RGB regresses towards muted colours; this term penalises lost (or excess) colourfulness
    directly.
    """

    def __init__(self, form: str = "weighted"):
        super().__init__()
        self.form = check_saturation_form(form)

    def forward(self, pred, target, inp=None):
        return saturation_difference(rgb_to_hsv(pred), rgb_to_hsv(target), self.form).mean()


class HSVLoss(nn.Module):
    """L = w_h |c(pred) - c(target)| + w_s L_S + w_v |V(pred) - V(target)| (means).

    c is the chroma-plane vector (:func:`losses.colorspace.chroma_plane`): hue compared in proportion
    to chroma, smooth at grey and across the red wrap-around, unlike a difference of hue angles.
    L_S is :func:`saturation_difference` of ``saturation_form`` (value-weighted by default).
    """

    def __init__(self, hue_weight: float = 1.0, saturation_weight: float = 1.0, value_weight: float = 1.0,
                 saturation_form: str = "weighted"):
        super().__init__()
        self.hue_weight, self.saturation_weight, self.value_weight = hue_weight, saturation_weight, value_weight
        self.saturation_form = check_saturation_form(saturation_form)

    def forward(self, pred, target, inp=None):
        hsv_pred, hsv_target = rgb_to_hsv(pred), rgb_to_hsv(target)
        hue_term = (chroma_plane(pred) - chroma_plane(target)).abs().mean()
        saturation_term = saturation_difference(hsv_pred, hsv_target, self.saturation_form).mean()
        value_term = (hsv_pred[:, 2] - hsv_target[:, 2]).abs().mean()
        return (self.hue_weight * hue_term + self.saturation_weight * saturation_term
                + self.value_weight * value_term)
