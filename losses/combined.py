"""A weighted sum of loss terms that reports every term, so every term gets logged."""
from typing import Mapping, Tuple

import torch
from torch import nn


class CombinedLoss(nn.Module):
    """L = sum_k w_k L_k(pred, target, inp).

    ``terms`` maps a name to ``(weight, loss_module)``; terms with weight 0 are dropped before
    anything touches their module, so a script may pass ``None`` for a disabled, costly term (VGG).
    ``forward`` returns a dict: ``'loss'`` the weighted total (with graph, for backward) and each
    term's unweighted value, detached, under its name (for logging).
    """

    def __init__(self, terms: Mapping[str, Tuple[float, nn.Module]]):
        super().__init__()
        active = {name: (float(weight), module) for name, (weight, module) in terms.items() if weight != 0}
        if not active:
            raise ValueError("CombinedLoss needs at least one term with a non-zero weight")
        self.weights = {name: weight for name, (weight, _) in active.items()}
        self.terms = nn.ModuleDict({name: module for name, (_, module) in active.items()})

    def forward(self, pred: torch.Tensor, target: torch.Tensor, inp: torch.Tensor = None) -> dict:
        values, total = {}, 0.0
        for name, term in self.terms.items():
            value = term(pred, target, inp)
            total = total + self.weights[name] * value
            values[name] = value.detach()
        values["loss"] = total
        return values
