"""Colour consistency as the angle between RGB vectors: hue and saturation errors, independent of brightness."""
from torch import nn

# Keeps the norm's gradient finite at black, where a colour has no direction.
ANGLE_EPS = 1e-3


class ColorConsistencyLoss(nn.Module):
    """L = mean_p (1 - cos(pred_p, target_p)), cos(x, y) = <x, y> / (|x|_eps |y|_eps), in [0, 1] for RGB >= 0.

    |v|_eps = sqrt(|v|^2 + eps^2). A pixel scaled by any positive factor keeps its colour (its RGB
    direction), so brightness changes cost nothing here while a colour cast does: 0 for pred = 2 target,
    1 for pure red against pure green.
    """

    def __init__(self, eps: float = ANGLE_EPS):
        super().__init__()
        self.eps = eps

    def forward(self, pred, target, inp=None):
        pred, target = pred.float(), target.float()
        pred_norm = (pred.square().sum(dim=1) + self.eps ** 2).sqrt()
        target_norm = (target.square().sum(dim=1) + self.eps ** 2).sqrt()
        cosine = (pred * target).sum(dim=1) / (pred_norm * target_norm)
        return (1.0 - cosine).mean()
