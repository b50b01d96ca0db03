"""Colour-direction loss: the model must change each pixel's colour the way the editor did.

L1 scores how far the output is from the target, not whether it moved the right way: an output that
warms a wall the editor cooled can have the same L1 as one that cools it too little. Comparing the
*directions* of the two changes (output - input vs target - input) penalises the wrong-way edit
directly, independently of its size, which the pixel terms already cover.
"""
from torch import nn

# Change vectors shorter than this (in RGB units; 1/255 ~ 0.004) have no meaningful direction: the
# epsilon keeps the norm's gradient finite at zero and lets such vectors fade out of the cosine.
DIRECTION_EPS = 1e-3


class ColorDirectionLoss(nn.Module):
    """L = sum_p |d_p| (1 - cos(c_p, d_p)) / sum_p |d_p|, in [0, 2].

    c = pred - inp and d = target - inp are the per-pixel RGB change vectors of the output and the edit,
    cos(c, d) = <c, d> / (|c|_eps |d|_eps) with |v|_eps = sqrt(|v|^2 + eps^2). Each pixel counts in
    proportion to how much the editor changed it, so pixels the edit leaves alone (whose direction
    is noise) barely count. 0 when every output change points the target's way; 1 when the model
    changes nothing; 2 when it changes everything the opposite way.
    """

    def __init__(self, eps: float = DIRECTION_EPS):
        super().__init__()
        self.eps = eps

    def forward(self, pred, target, inp):
        inp = inp.float()
        output_change, edit_change = pred.float() - inp, target.float() - inp
        output_norm = (output_change.square().sum(dim=1) + self.eps ** 2).sqrt()
        edit_norm = (edit_change.square().sum(dim=1) + self.eps ** 2).sqrt()
        cosine = (output_change * edit_change).sum(dim=1) / (output_norm * edit_norm)
        edit_size = edit_norm - self.eps  # 0 for an unchanged pixel, ~|d| otherwise
        return (edit_size * (1.0 - cosine)).sum() / edit_size.sum().clamp_min(self.eps)
