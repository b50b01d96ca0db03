"""Per-pixel reconstruction losses. Every loss in ``losses/`` has the signature
``loss(pred, target, inp) -> scalar`` (the as-shot input ``inp`` is ignored by those that do not use
it), so :class:`losses.combined.CombinedLoss` can mix any of them.
"""
import torch
from torch import nn


class L1Loss(nn.Module):
    """L = mean |pred - target|."""

    def forward(self, pred, target, inp=None):
        return (pred.float() - target.float()).abs().mean()


class CharbonnierLoss(nn.Module):
    """L = mean sqrt((pred - target)^2 + eps^2): L1 that is smooth at zero (Restormer/DarkIR use eps=1e-3)."""

    def __init__(self, eps: float = 1e-3):
        super().__init__()
        self.eps = eps

    def forward(self, pred, target, inp=None):
        diff = pred.float() - target.float()
        return torch.sqrt(diff * diff + self.eps ** 2).mean()
