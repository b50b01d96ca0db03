"""Adversarial loss of a conditional GAN: the generator's term, and the discriminator's own loss.

The discriminator D sees the as-shot input next to an image, D(cat(inp, image)) (pix2pix's conditional
setup), and returns a map of patch logits. Two formulations:

* ``'hinge'`` (SAGAN / BigGAN, the usual partner of spectral norm):
  L_D = mean relu(1 - D(real)) + mean relu(1 + D(fake)),  L_G = -mean D(fake);
* ``'lsgan'`` (Mao et al. 2017, pix2pix's choice with instance norm):
  L_D = (mean (D(real) - 1)^2 + mean D(fake)^2) / 2,  L_G = mean (D(fake) - 1)^2.
"""
import contextlib

import torch
import torch.nn.functional as F
from torch import nn

GAN_LOSSES = ("hinge", "lsgan")


@contextlib.contextmanager
def frozen(module: nn.Module):
    """Temporarily stop gradients into ``module``'s parameters (they still flow through it to its input)."""
    flags = [p.requires_grad for p in module.parameters()]
    module.requires_grad_(False)
    try:
        yield module
    finally:
        for parameter, flag in zip(module.parameters(), flags):
            parameter.requires_grad_(flag)


class AdversarialLoss(nn.Module):
    """The generator's adversarial term L_G(pred | inp) (see the module docstring); :meth:`discriminator_loss`
    gives L_D for the discriminator's own step.

    The discriminator is frozen while L_G is computed, so the generator's backward leaves no gradient in
    it; call :meth:`discriminator_loss` (with its own optimizer step) before or after the generator step.
    """

    def __init__(self, discriminator: nn.Module, kind: str = "hinge"):
        super().__init__()
        if kind not in GAN_LOSSES:
            raise ValueError(f"adversarial loss must be one of {GAN_LOSSES}, got {kind!r}")
        self.discriminator, self.kind = discriminator, kind

    def logits(self, image: torch.Tensor, inp: torch.Tensor) -> torch.Tensor:
        return self.discriminator(torch.cat([inp, image], dim=1)).float()

    def forward(self, pred, target, inp):
        with frozen(self.discriminator):
            fake = self.logits(pred, inp)
        if self.kind == "hinge":
            return -fake.mean()
        return (fake - 1.0).square().mean()

    def discriminator_loss(self, pred, target, inp):
        """L_D with ``pred`` detached: the discriminator learns to tell the target from the output."""
        real, fake = self.logits(target, inp), self.logits(pred.detach(), inp)
        if self.kind == "hinge":
            return F.relu(1.0 - real).mean() + F.relu(1.0 + fake).mean()
        return 0.5 * ((real - 1.0).square().mean() + fake.square().mean())
