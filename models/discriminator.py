"""PatchGAN discriminator (Isola et al., "Image-to-Image Translation with Conditional Adversarial
Networks", CVPR 2017): a fully convolutional classifier whose every output logit judges one patch.

Layout of pix2pix's ``NLayerDiscriminator`` (4x4 convolutions, LeakyReLU 0.2): a stride-2 convolution
without normalisation, ``num_layers - 1`` more stride-2 convolutions doubling the width (capped at 8x),
a stride-1 convolution, and a stride-1 convolution to one logit channel. With ``num_layers=3`` each
logit sees a 70x70-pixel patch (the "70x70 PatchGAN"); an input of S pixels gives about S/8 - 2
logits per side, so it needs inputs of at least 3 * 2^num_layers pixels (24 for the 70x70 PatchGAN).
"""
import torch
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm

NORMS = ("spectral", "instance")
KERNEL_SIZE, PADDING = 4, 1


class PatchDiscriminator(nn.Module):
    """PatchGAN over ``in_channels`` (6: the as-shot input and an image, for a conditional GAN).

    ``norm='spectral'``: spectral normalisation of every convolution (Miyato et al. 2018), the usual
    partner of the hinge loss; ``'instance'``: instance norm after the inner convolutions, as in pix2pix.
    Input (N, in_channels, H, W); output (N, 1, h, w) logits.
    """

    def __init__(self, in_channels: int = 6, base_channels: int = 64, num_layers: int = 3, norm: str = "spectral"):
        super().__init__()
        if norm not in NORMS:
            raise ValueError(f"PatchDiscriminator norm must be one of {NORMS}, got {norm!r}")
        if num_layers < 1:
            raise ValueError(f"PatchDiscriminator num_layers must be >= 1, got {num_layers}")
        self.norm, self.min_size = norm, 3 * 2 ** num_layers
        widths = [base_channels * min(2 ** i, 8) for i in range(num_layers + 1)]
        layers = [self._conv(in_channels, widths[0], stride=2, bias=True), nn.LeakyReLU(0.2)]
        for index in range(1, num_layers + 1):
            stride = 2 if index < num_layers else 1
            layers += [self._conv(widths[index - 1], widths[index], stride=stride, bias=norm == "spectral"),
                       *self._norm_layer(widths[index]), nn.LeakyReLU(0.2)]
        layers.append(self._conv(widths[-1], 1, stride=1, bias=True))
        self.body = nn.Sequential(*layers)

    def _conv(self, in_channels: int, out_channels: int, stride: int, bias: bool) -> nn.Module:
        conv = nn.Conv2d(in_channels, out_channels, KERNEL_SIZE, stride=stride, padding=PADDING, bias=bias)
        return spectral_norm(conv) if self.norm == "spectral" else conv

    def _norm_layer(self, channels: int) -> list:
        # Instance norm subtracts the mean, which makes a bias before it redundant (hence bias=False).
        return [nn.InstanceNorm2d(channels)] if self.norm == "instance" else []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if min(x.shape[-2:]) < self.min_size:
            raise ValueError(f"PatchDiscriminator needs images of at least {self.min_size} pixels a side, got "
                             f"{tuple(x.shape[-2:])} (raise --crop)")
        return self.body(x)
