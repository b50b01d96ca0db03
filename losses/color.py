"""Colour losses in HSV terms: the catalog's 'saturation/HSV colour' term.

Three forms of the saturation comparison (``form=``):

- ``"chroma"`` (the default): L_S = mean | C(pred) - C(target) |, C = sqrt(a^2 + b^2 + e^2) - e the
  length of the hexagonal chroma vector (a, b) = (R - (G + B)/2, sqrt(3)/2 (G - B))
  (:func:`losses.colorspace.chroma_plane`; Hanbury's circular chroma), e = 1e-3. It compares how
  colourful a pixel is in absolute terms, so a muted prediction is penalised where colour is visible
  (mid-tones, recovered windows) and near black, where every colour is tiny, there is little to
  compare. Its gradient is bounded everywhere: each channel's is at most 1/(N H W), a per-pixel mean's,
  with no 1/V growth and no division at black (e keeps the length differentiable at grey). And it is
  orthogonal to grey: the three channels' gradients of a pixel sum to zero, so the term never moves a
  pixel's mean level, which L1 alone sets. Issue 11's measurements (README "The saturation term"):
  next to L1 it keeps L1's shadow PSNR where the value-weighted form costs 0.2 dB.
- ``"weighted"``: L_S = mean( sg(v) |S(pred) - S(target)| ), v = clamp(V(pred), 0, 1) the HSV value of
  the prediction and sg() stop-gradient. S = (max - min) / max(max, 1e-3) has a gradient of size 1/V;
  multiplying by the pixel's own value cancels it, so the gradient is bounded too, but it has a
  component along grey (-S per pixel summed over channels) that darkens or lifts the pixel.
- ``"catalog"``: L_S = mean |S(pred) - S(target)|, the catalog's literal formula, kept to reproduce
  the original experiment. Measured on the demo data (issue 11): with pred = the as-shot input, its
  mean per-pixel gradient is 14x L1's in the shadows (luma < 0.15; 99th percentile 113x) and 4.7x in
  the mid-tones.
"""
import torch
from torch import nn

from .colorspace import chroma_plane, rgb_to_hsv

SATURATION_FORMS = ("chroma", "weighted", "catalog")
DEFAULT_SATURATION_FORM = "chroma"
SATURATION_FORM_HELP = ("chroma: |difference of chroma lengths|, bounded gradient, never moves a pixel's level "
                        "(the default, issue 11); weighted: |dS| x the prediction's HSV value; "
                        "catalog: the catalog's plain |dS| of S = (max - min) / max")
CHROMA_EPS = 1e-3


def check_saturation_form(form: str) -> str:
    if form not in SATURATION_FORMS:
        raise ValueError(f"saturation form must be one of {', '.join(SATURATION_FORMS)}, got {form!r}")
    return form


def chroma_length(rgb: torch.Tensor, eps: float = CHROMA_EPS) -> torch.Tensor:
    """C = sqrt(a^2 + b^2 + eps^2) - eps of the hexagonal chroma vector, shape (N, H, W): 0 at grey,
    1 at a fully saturated primary, smooth everywhere."""
    vector = chroma_plane(rgb)
    return torch.sqrt(vector.square().sum(1) + eps * eps) - eps


def saturation_difference(pred, target, form: str = DEFAULT_SATURATION_FORM, hsv_pred=None, hsv_target=None):
    """Per-pixel saturation difference (N, H, W) of the given ``form`` (see the module docstring) between
    RGB ``pred`` and ``target``; the HSV forms reuse ``hsv_pred`` / ``hsv_target`` when given
    (:func:`losses.colorspace.rgb_to_hsv` of the same images)."""
    if check_saturation_form(form) == "chroma":
        return (chroma_length(pred) - chroma_length(target)).abs()
    hsv_pred = rgb_to_hsv(pred) if hsv_pred is None else hsv_pred
    hsv_target = rgb_to_hsv(target) if hsv_target is None else hsv_target
    difference = (hsv_pred[:, 1] - hsv_target[:, 1]).abs()
    if form == "catalog":
        return difference
    return hsv_pred[:, 2].detach().clamp(0.0, 1.0) * difference


class SaturationLoss(nn.Module):
    """L = mean of :func:`saturation_difference`: the chroma form (default), the value-weighted one, or
    the catalog's plain mean |S(pred) - S(target)|, S = HSV saturation (max - min) / max.

    Plain L1 on RGB regresses towards muted colours; this term penalises lost (or excess) colourfulness
    directly.
    """

    def __init__(self, form: str = DEFAULT_SATURATION_FORM):
        super().__init__()
        self.form = check_saturation_form(form)

    def forward(self, pred, target, inp=None):
        return saturation_difference(pred, target, self.form).mean()


class HSVLoss(nn.Module):
    """L = w_h |c(pred) - c(target)| + w_s L_S + w_v |V(pred) - V(target)| (means).

    c is the chroma-plane vector (:func:`losses.colorspace.chroma_plane`): hue compared in proportion
    to chroma, smooth at grey and across the red wrap-around, unlike a difference of hue angles.
    L_S is :func:`saturation_difference` of ``saturation_form`` (the chroma form by default).
    """

    def __init__(self, hue_weight: float = 1.0, saturation_weight: float = 1.0, value_weight: float = 1.0,
                 saturation_form: str = DEFAULT_SATURATION_FORM):
        super().__init__()
        self.hue_weight, self.saturation_weight, self.value_weight = hue_weight, saturation_weight, value_weight
        self.saturation_form = check_saturation_form(saturation_form)

    def forward(self, pred, target, inp=None):
        hsv_pred, hsv_target = rgb_to_hsv(pred), rgb_to_hsv(target)
        hue_term = (chroma_plane(pred) - chroma_plane(target)).abs().mean()
        saturation_term = saturation_difference(pred, target, self.saturation_form, hsv_pred, hsv_target).mean()
        value_term = (hsv_pred[:, 2] - hsv_target[:, 2]).abs().mean()
        return (self.hue_weight * hue_term + self.saturation_weight * saturation_term
                + self.value_weight * value_term)
