"""Mixup of paired batches, as BasicSR's ``Mixing_Augment`` (Restormer / Retinexformer / RetinexMamba
training option ``mixing_augs: {mixup: true, mixup_beta: 1.2, use_identity: true}``)."""
import torch

MIXUP_BETA = 1.2


def mixup_pairs(inp: torch.Tensor, target: torch.Tensor, beta: float = MIXUP_BETA, use_identity: bool = True):
    """Blend each pair with another pair of the batch: with ``lam ~ Beta(beta, beta)`` and a random
    permutation ``p`` of the batch, ``inp = lam * inp + (1 - lam) * inp[p]`` and the same ``lam, p``
    for ``target``. With ``use_identity`` half of the calls (at random) return the batch unchanged,
    as the official option does.

    The draws come from torch's global CPU generator (saved and restored with a run), so a resumed run
    mixes exactly as an uninterrupted one; no device sync.
    """
    if use_identity and torch.rand(()) < 0.5:
        return inp, target
    lam = float(torch.distributions.Beta(torch.tensor(beta), torch.tensor(beta)).sample())
    order = torch.randperm(inp.shape[0]).to(inp.device, non_blocking=True)
    return lam * inp + (1 - lam) * inp[order], lam * target + (1 - lam) * target[order]
