"""Two ways to combine loss terms other than fixed weights (:class:`losses.combined.CombinedLoss`).

* :class:`UncertaintyWeightedLoss`: learned homoscedastic-uncertainty weights (Kendall, Gal and
  Cipolla, CVPR 2018, "Multi-Task Learning Using Uncertainty to Weigh Losses", eq. 7 in the common
  log-variance form) ``L = sum_k exp(-s_k) L_k + s_k``, with one learnable ``s_k = log sigma_k^2``
  per term (starting at 0: every weight 1). A term that stays large gets a smaller weight
  ``exp(-s_k)``; the ``+ s_k`` keeps the weights from collapsing to 0. The optimum for a fixed
  ``L_k`` is ``exp(-s_k) = 1 / L_k``, so terms of very different scales end up contributing alike.
* :class:`NormalizedLoss`: ``L = sum_k w_k L_k / M_k`` with ``M_k`` the running maximum of term k
  over training (including the current step), so every normalised term lies in (0, 1] and loss
  values compare across experiments whatever the terms' natural scales.

Both return the :class:`CombinedLoss` dict: ``'loss'`` (with graph) and each raw term's value,
detached, under its name, plus ``weight_<name>`` (uncertainty) or ``<name>_norm`` (normalised).
"""
from typing import Mapping, Tuple

import torch
from torch import nn


class LogVariances(nn.Module):
    """The learnable ``log_vars`` s_k of :class:`UncertaintyWeightedLoss`, apart from its terms so a run
    saves and optimises these few numbers without the terms' own weights (a VGG network)."""

    def __init__(self, count: int):
        super().__init__()
        self.log_vars = nn.Parameter(torch.zeros(count))


class UncertaintyWeightedLoss(nn.Module):
    """L = sum_k exp(-s_k) L_k(pred, target, inp) + s_k; the s_k (``uncertainty.log_vars``) are
    parameters to train along with the network (without weight decay)."""

    def __init__(self, terms: Mapping[str, nn.Module]):
        super().__init__()
        if not terms:
            raise ValueError("UncertaintyWeightedLoss needs at least one term")
        self.terms = nn.ModuleDict(terms)
        self.uncertainty = LogVariances(len(self.terms))

    @property
    def log_vars(self) -> nn.Parameter:
        return self.uncertainty.log_vars

    def weights(self) -> dict:
        """The current weight exp(-s_k) of each term, detached."""
        return dict(zip(self.terms, torch.exp(-self.log_vars.detach()).unbind()))

    def forward(self, pred, target, inp=None) -> dict:
        values, total = {}, 0.0
        for (name, term), log_var in zip(self.terms.items(), self.log_vars.unbind()):
            value = term(pred, target, inp)
            total = total + torch.exp(-log_var) * value + log_var
            values[name] = value.detach()
        values.update({f"weight_{name}": weight for name, weight in self.weights().items()})
        values["loss"] = total
        return values


class NormalizedLoss(nn.Module):
    """L = sum_k w_k L_k / M_k, M_k the running maximum of L_k (a buffer, saved and resumed with the
    run). ``terms`` maps a name to ``(weight, loss_module)`` as in :class:`CombinedLoss`."""

    def __init__(self, terms: Mapping[str, Tuple[float, nn.Module]]):
        super().__init__()
        active = {name: (float(weight), module) for name, (weight, module) in terms.items() if weight != 0}
        if not active:
            raise ValueError("NormalizedLoss needs at least one term with a non-zero weight")
        self.weights = {name: weight for name, (weight, _) in active.items()}
        self.terms = nn.ModuleDict({name: module for name, (_, module) in active.items()})
        # 0 until the first step: the first value becomes the maximum, so that step's terms are 1.
        self.register_buffer("running_max", torch.zeros(len(self.terms)))

    def forward(self, pred, target, inp=None) -> dict:
        raw = [term(pred, target, inp) for term in self.terms.values()]
        if self.training:
            current = torch.stack(raw).detach()
            # a non-finite step (skipped by the optimizer's guard) must not poison the maxima
            current = torch.where(torch.isfinite(current), current, self.running_max)
            self.running_max.copy_(torch.maximum(self.running_max, current))
        scale = self.running_max.clamp_min(torch.finfo(self.running_max.dtype).tiny)
        values, total = {}, 0.0
        for (name, value), maximum in zip(zip(self.terms, raw), scale.unbind()):
            normalised = value / maximum
            total = total + self.weights[name] * normalised
            values[name], values[f"{name}_norm"] = value.detach(), normalised.detach()
        values["loss"] = total
        return values
