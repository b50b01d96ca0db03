"""DarkIR: robust low-light image restoration (Feijoo et al., CVPR 2025).

A NAFNet-style U-Net whose encoder blocks (``EBlock``) mix features in the
frequency domain (an MLP on the FFT magnitude) and whose decoder blocks
(``DBlock``) use parallel dilated depth-wise convolutions. Module and parameter
names follow the official implementation (cidautai/DarkIR, ``archs/DarkIR.py``)
so that its published checkpoints (``{'params': state_dict}``) load with
``strict=True``.
"""

from typing import Sequence, Tuple, Union

import torch
import torch.nn as nn

from .padding import pad_to_multiple

__all__ = ["DarkIR", "darkir_m", "darkir_l"]


class LayerNorm2d(nn.Module):
    """Layer normalisation over the channel dimension of an (N, C, H, W) tensor.

    y = (x - mean_c(x)) / sqrt(var_c(x) + eps) * weight + bias, computed in fp32
    so that the statistics stay accurate when the input arrives in bf16/fp16
    under autocast.
    """

    def __init__(self, channels: int, eps: float = 1e-6):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        in_dtype = x.dtype
        x = x.float()
        var, mean = torch.var_mean(x, dim=1, keepdim=True, correction=0)
        normed = (x - mean) * torch.rsqrt(var + self.eps)
        return (normed * self.weight.view(1, -1, 1, 1) + self.bias.view(1, -1, 1, 1)).to(in_dtype)


class SimpleGate(nn.Module):
    """NAFNet gate: split channels in two halves and multiply them."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        first, second = x.chunk(2, dim=1)
        return first * second


class BlockSequence(nn.Module):
    """Blocks applied in order; stored as ``modules_list`` to match the official key names."""

    def __init__(self, *blocks: nn.Module):
        super().__init__()
        self.modules_list = nn.ModuleList(blocks)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.modules_list:
            x = block(x)
        return x


class FreMLP(nn.Module):
    """Point-wise MLP on the amplitude spectrum; the phase is kept.

    X = rfft2(x); |X| -> conv1x1 -> LeakyReLU(0.1) -> conv1x1 = A;
    out = irfft2(A * exp(i * angle(X))).

    The whole block runs in fp32 with autocast disabled: torch.fft rejects half
    precision (on CPU always, on CUDA for sizes that are not powers of two), and
    un-normalised spectra (DC term ~ H*W) overflow fp16.
    """

    def __init__(self, nc: int, expand: int = 2):
        super().__init__()
        self.process1 = nn.Sequential(
            nn.Conv2d(nc, expand * nc, 1, 1, 0),
            nn.LeakyReLU(0.1, inplace=True),
            nn.Conv2d(expand * nc, nc, 1, 1, 0),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        height, width = x.shape[-2:]
        with torch.autocast(device_type=x.device.type, enabled=False):
            spectrum = torch.fft.rfft2(x.float(), norm="backward")
            phase = torch.angle(spectrum)
            amplitude = self.process1(torch.abs(spectrum))
            # torch.polar's gradient is wrong for negative amplitudes, which the MLP
            # can produce, so the complex number is assembled from cos/sin.
            spectrum = torch.complex(amplitude * torch.cos(phase), amplitude * torch.sin(phase))
            out = torch.fft.irfft2(spectrum, s=(height, width), norm="backward")
        return out.to(x.dtype)


class Branch(nn.Module):
    """One dilated 3x3 depth-wise convolution over ``c * DW_Expand`` channels."""

    def __init__(self, c: int, DW_Expand: int, dilation: int = 1):
        super().__init__()
        channels = DW_Expand * c
        self.branch = nn.Sequential(
            nn.Conv2d(channels, channels, kernel_size=3, padding=dilation, dilation=dilation,
                      groups=channels, bias=True)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.branch(x)


def _sum_branches(branches: nn.ModuleList, x: torch.Tensor) -> torch.Tensor:
    """Sum of the parallel dilated branches applied to the same input."""
    total = branches[0](x)
    for branch in branches[1:]:
        total = total + branch(x)
    return total


class EBlock(nn.Module):
    """Encoder block: dilated depth-wise spatial attention, then frequency-domain gating.

    y = x + beta * conv3(SCA(SG(sum_d dwconv_d(conv1(extra_conv(norm1(x)))))))
    out = y + gamma * (y * FreMLP(norm2(y)))
    """

    def __init__(self, c: int, DW_Expand: int = 2, dilations: Sequence[int] = (1,),
                 extra_depth_wise: bool = False):
        super().__init__()
        dw_channel = DW_Expand * c
        self.extra_conv = (nn.Conv2d(c, c, kernel_size=3, padding=1, groups=c, bias=True)
                           if extra_depth_wise else nn.Identity())
        self.conv1 = nn.Conv2d(c, dw_channel, kernel_size=1, bias=True)
        self.branches = nn.ModuleList(Branch(c, DW_Expand, dilation=d) for d in dilations)
        self.sca = nn.Sequential(
            nn.AdaptiveAvgPool2d(1),
            nn.Conv2d(dw_channel // 2, dw_channel // 2, kernel_size=1, bias=True),
        )
        self.sg1 = SimpleGate()
        self.conv3 = nn.Conv2d(dw_channel // 2, c, kernel_size=1, bias=True)
        self.norm1 = LayerNorm2d(c)
        self.norm2 = LayerNorm2d(c)
        self.freq = FreMLP(nc=c, expand=2)
        self.gamma = nn.Parameter(torch.zeros((1, c, 1, 1)))
        self.beta = nn.Parameter(torch.zeros((1, c, 1, 1)))

    def forward(self, inp: torch.Tensor) -> torch.Tensor:
        x = self.conv1(self.extra_conv(self.norm1(inp)))
        x = _sum_branches(self.branches, x)
        x = self.sg1(x)
        x = self.conv3(self.sca(x) * x)
        y = inp + self.beta * x
        x = y * self.freq(self.norm2(y))
        return y + self.gamma * x


class DBlock(nn.Module):
    """Decoder block: multi-dilation depth-wise attention, then a gated feed-forward.

    y = x + beta * conv3(SCA(SG(sum_d dwconv_d(extra_conv(conv1(norm1(x)))))))
    out = y + gamma * conv5(SG(conv4(norm2(y))))
    """

    def __init__(self, c: int, DW_Expand: int = 2, FFN_Expand: int = 2,
                 dilations: Sequence[int] = (1,), extra_depth_wise: bool = False):
        super().__init__()
        dw_channel = DW_Expand * c
        ffn_channel = FFN_Expand * c
        self.conv1 = nn.Conv2d(c, dw_channel, kernel_size=1, bias=True)
        # groups=c (not dw_channel) as in the official model: 2 channels per group.
        self.extra_conv = (nn.Conv2d(dw_channel, dw_channel, kernel_size=3, padding=1, groups=c, bias=True)
                           if extra_depth_wise else nn.Identity())
        self.branches = nn.ModuleList(Branch(dw_channel, DW_Expand=1, dilation=d) for d in dilations)
        self.sca = nn.Sequential(
            nn.AdaptiveAvgPool2d(1),
            nn.Conv2d(dw_channel // 2, dw_channel // 2, kernel_size=1, bias=True),
        )
        self.sg1 = SimpleGate()
        self.sg2 = SimpleGate()
        self.conv3 = nn.Conv2d(dw_channel // 2, c, kernel_size=1, bias=True)
        self.conv4 = nn.Conv2d(c, ffn_channel, kernel_size=1, bias=True)
        self.conv5 = nn.Conv2d(ffn_channel // 2, c, kernel_size=1, bias=True)
        self.norm1 = LayerNorm2d(c)
        self.norm2 = LayerNorm2d(c)
        self.gamma = nn.Parameter(torch.zeros((1, c, 1, 1)))
        self.beta = nn.Parameter(torch.zeros((1, c, 1, 1)))

    def forward(self, inp: torch.Tensor) -> torch.Tensor:
        x = self.extra_conv(self.conv1(self.norm1(inp)))
        x = _sum_branches(self.branches, x)
        x = self.sg1(x)
        x = self.conv3(self.sca(x) * x)
        y = inp + self.beta * x
        x = self.conv5(self.sg2(self.conv4(self.norm2(y))))
        return y + self.gamma * x


class DarkIR(nn.Module):
    """DarkIR U-Net for low-light restoration (global residual: output = input + correction).

    Arguments and defaults are those of the official model (DarkIR-m). The
    ``side_out`` head maps the bottleneck features to a low-resolution image
    (1 / 2**len(enc_blk_nums) of the padded input) for the auxiliary loss used
    in training; it is part of the published checkpoints.
    """

    def __init__(self, img_channel: int = 3, width: int = 32, middle_blk_num_enc: int = 2,
                 middle_blk_num_dec: int = 2, enc_blk_nums: Sequence[int] = (1, 2, 3),
                 dec_blk_nums: Sequence[int] = (3, 1, 1), dilations: Sequence[int] = (1, 4, 9),
                 extra_depth_wise: bool = True):
        super().__init__()
        if len(enc_blk_nums) != len(dec_blk_nums):
            raise ValueError(f"DarkIR: enc_blk_nums {list(enc_blk_nums)} and dec_blk_nums "
                             f"{list(dec_blk_nums)} must have the same length (one per scale)")
        self.intro = nn.Conv2d(img_channel, width, kernel_size=3, padding=1, bias=True)
        self.ending = nn.Conv2d(width, img_channel, kernel_size=3, padding=1, bias=True)

        self.encoders = nn.ModuleList()
        self.downs = nn.ModuleList()
        self.ups = nn.ModuleList()
        self.decoders = nn.ModuleList()

        chan = width
        for num_blocks in enc_blk_nums:
            self.encoders.append(BlockSequence(
                *(EBlock(chan, extra_depth_wise=extra_depth_wise) for _ in range(num_blocks))))
            self.downs.append(nn.Conv2d(chan, 2 * chan, kernel_size=2, stride=2))
            chan *= 2

        self.middle_blks_enc = BlockSequence(
            *(EBlock(chan, extra_depth_wise=extra_depth_wise) for _ in range(middle_blk_num_enc)))
        self.middle_blks_dec = BlockSequence(
            *(DBlock(chan, dilations=dilations, extra_depth_wise=extra_depth_wise)
              for _ in range(middle_blk_num_dec)))

        for num_blocks in dec_blk_nums:
            self.ups.append(nn.Sequential(nn.Conv2d(chan, 2 * chan, kernel_size=1, bias=False),
                                          nn.PixelShuffle(2)))
            chan //= 2
            self.decoders.append(BlockSequence(
                *(DBlock(chan, dilations=dilations, extra_depth_wise=extra_depth_wise)
                  for _ in range(num_blocks))))

        self.padder_size = 2 ** len(self.encoders)
        self.side_out = nn.Conv2d(width * 2 ** len(self.encoders), img_channel, kernel_size=3, padding=1)

    def forward(self, x: torch.Tensor, side_loss: bool = False
                ) -> Union[torch.Tensor, Tuple[torch.Tensor, torch.Tensor]]:
        """Restore ``x`` (N, C, H, W), any H and W.

        Returns the restored image of the same size; with ``side_loss=True``
        returns ``(side_out, out)`` where ``side_out`` is the low-resolution
        estimate of shape (N, C, ceil(H / s), ceil(W / s)), s = ``padder_size``.
        """
        height, width = x.shape[-2:]
        padded, _ = pad_to_multiple(x, self.padder_size, mode="constant")
        feats = self.intro(padded)

        skips = []
        for encoder, down in zip(self.encoders, self.downs):
            feats = encoder(feats)
            skips.append(feats)
            feats = down(feats)

        light = self.middle_blks_enc(feats)
        feats = self.middle_blks_dec(light) + light

        for decoder, up, skip in zip(self.decoders, self.ups, reversed(skips)):
            feats = decoder(up(feats) + skip)

        out = (self.ending(feats) + padded)[:, :, :height, :width]
        if side_loss:
            return self.side_out(light), out
        return out


def darkir_m(**overrides) -> DarkIR:
    """DarkIR-m (width 32, 3,321,638 parameters), the size of the published ``DarkIR_384.pt``."""
    return DarkIR(**{"width": 32, **overrides})


def darkir_l(**overrides) -> DarkIR:
    """DarkIR-l (width 64, 12,957,254 parameters), as in the official ``DarkIR_64width.pt`` config."""
    return DarkIR(**{"width": 64, **overrides})
