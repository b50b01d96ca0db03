"""NAFNet: a nonlinear-activation-free U-Net for image restoration (Chen et al., ECCV 2022).

Facts from the official implementation, megvii-research/NAFNet:
``basicsr/models/archs/NAFNet_arch.py`` (NAFBlock, NAFNet, NAFNetLocal), ``arch_util.py``
(LayerNorm2d, eps 1e-6) and ``local_arch.py`` (the test-time local average pooling, TLC,
Chu et al. 2021). Constructor arguments, their defaults and every parameter name and shape are the
official ones, so the published ``{'params': ...}`` files (NAFNet-SIDD-width32, NAFNet-GoPro-width64)
load with ``strict=True`` through :func:`utils.checkpoint.load_pretrained`. The official options:

- SIDD width 32: ``NAFNet(width=32, middle_blk_num=12, enc_blk_nums=[2, 2, 4, 8],
  dec_blk_nums=[2, 2, 2, 2])``, 29,159,715 parameters;
- GoPro width 64: ``NAFNetLocal(width=64, middle_blk_num=1, enc_blk_nums=[1, 1, 1, 28],
  dec_blk_nums=[1, 1, 1, 1])``, 67,888,835 parameters (trained as ``NAFNet``, tested as
  ``NAFNetLocal``: same keys).

Any H x W is accepted: the input is zero-padded to a multiple of ``2 ** len(enc_blk_nums)`` (zeros,
as the official ``check_image_size``, so outputs equal the official ones) and the output cropped back.
"""
from typing import Sequence, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from .padding import pad_to_multiple

__all__ = ["NAFBlock", "NAFNet", "NAFNetLocal", "LocalAvgPool2d"]


class LayerNorm2d(nn.Module):
    """Layer normalisation over the channels of (N, C, H, W), computed in fp32 (accurate statistics
    under bf16/fp16 autocast): y = (x - mean_c) / sqrt(var_c + eps) * weight + bias."""

    def __init__(self, channels: int, eps: float = 1e-6):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        var, mean = torch.var_mean(x.float(), dim=1, keepdim=True, correction=0)
        normed = (x.float() - mean) * torch.rsqrt(var + self.eps)
        return (normed * self.weight.view(1, -1, 1, 1) + self.bias.view(1, -1, 1, 1)).to(x.dtype)


class SimpleGate(nn.Module):
    """The gate that replaces every activation: split the channels in halves, multiply them."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        first, second = x.chunk(2, dim=1)
        return first * second


class NAFBlock(nn.Module):
    """x + beta * conv3(SCA(gate(dwconv(conv1(LN(x)))))), then y + gamma * conv5(gate(conv4(LN(y)))).

    SCA (simplified channel attention) scales the channels by a 1x1 conv of their global mean:
    ``sca = Sequential(AdaptiveAvgPool2d(1), Conv2d)`` (the pooling is swapped for
    :class:`LocalAvgPool2d` in :class:`NAFNetLocal`). ``beta``/``gamma`` start at zero, so each block
    starts as the identity.
    """

    def __init__(self, c: int, DW_Expand: int = 2, FFN_Expand: int = 2, drop_out_rate: float = 0.0):
        super().__init__()
        dw_channel = c * DW_Expand
        self.conv1 = nn.Conv2d(c, dw_channel, 1)
        self.conv2 = nn.Conv2d(dw_channel, dw_channel, 3, padding=1, groups=dw_channel)
        self.conv3 = nn.Conv2d(dw_channel // 2, c, 1)
        self.sca = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(dw_channel // 2, dw_channel // 2, 1))
        self.sg = SimpleGate()
        ffn_channel = FFN_Expand * c
        self.conv4 = nn.Conv2d(c, ffn_channel, 1)
        self.conv5 = nn.Conv2d(ffn_channel // 2, c, 1)
        self.norm1 = LayerNorm2d(c)
        self.norm2 = LayerNorm2d(c)
        self.dropout1 = nn.Dropout(drop_out_rate) if drop_out_rate > 0 else nn.Identity()
        self.dropout2 = nn.Dropout(drop_out_rate) if drop_out_rate > 0 else nn.Identity()
        self.beta = nn.Parameter(torch.zeros((1, c, 1, 1)))
        self.gamma = nn.Parameter(torch.zeros((1, c, 1, 1)))

    def forward(self, inp: torch.Tensor) -> torch.Tensor:
        x = self.sg(self.conv2(self.conv1(self.norm1(inp))))
        x = self.dropout1(self.conv3(x * self.sca(x)))
        y = inp + x * self.beta
        x = self.dropout2(self.conv5(self.sg(self.conv4(self.norm2(y)))))
        return y + x * self.gamma


class NAFNet(nn.Module):
    """intro conv -> encoder levels (NAFBlocks, then a stride-2 2x2 conv doubling the channels) ->
    middle blocks -> decoder levels (1x1 conv + PixelShuffle(2) halving the channels, + the encoder
    skip, NAFBlocks) -> ending conv, + the input (global residual)."""

    def __init__(self, img_channel: int = 3, width: int = 16, middle_blk_num: int = 1,
                 enc_blk_nums: Sequence[int] = (), dec_blk_nums: Sequence[int] = ()):
        super().__init__()
        self.intro = nn.Conv2d(img_channel, width, 3, padding=1)
        self.ending = nn.Conv2d(width, img_channel, 3, padding=1)
        self.encoders, self.downs = nn.ModuleList(), nn.ModuleList()
        self.ups, self.decoders = nn.ModuleList(), nn.ModuleList()
        chan = width
        for num in enc_blk_nums:
            self.encoders.append(nn.Sequential(*[NAFBlock(chan) for _ in range(num)]))
            self.downs.append(nn.Conv2d(chan, 2 * chan, 2, 2))
            chan *= 2
        self.middle_blks = nn.Sequential(*[NAFBlock(chan) for _ in range(middle_blk_num)])
        for num in dec_blk_nums:
            self.ups.append(nn.Sequential(nn.Conv2d(chan, chan * 2, 1, bias=False), nn.PixelShuffle(2)))
            chan //= 2
            self.decoders.append(nn.Sequential(*[NAFBlock(chan) for _ in range(num)]))
        self.padder_size = 2 ** len(self.encoders)

    def forward(self, inp: torch.Tensor) -> torch.Tensor:
        padded, (height, width) = pad_to_multiple(inp, self.padder_size, mode="constant")
        x = self.intro(padded)
        skips = []
        for encoder, down in zip(self.encoders, self.downs):
            x = encoder(x)
            skips.append(x)
            x = down(x)
        x = self.middle_blks(x)
        for decoder, up, skip in zip(self.decoders, self.ups, reversed(skips)):
            x = decoder(up(x) + skip)
        x = self.ending(x) + padded
        return x[:, :, :height, :width]


class LocalAvgPool2d(nn.Module):
    """Test-time local statistics (TLC): the mean over a ``kernel_size`` window around each pixel
    instead of over the whole feature map, so a network trained on crops sees crop-sized statistics
    on a full photo. Windows are the valid positions (stride 1); the border is replicate-padded back
    to the input size. A map no larger than the window gets the global mean (what it was trained on).

    ``fast_imp`` is the official faster, non-equivalent variant: the window sums are taken on a
    subsampled map (every r-th pixel, r the largest of 5..1 dividing the side, capped at
    ``max_reduction``) and upsampled by nearest neighbour.
    """

    REDUCTIONS = (5, 4, 3, 2, 1)

    def __init__(self, kernel_size: Tuple[int, int], fast_imp: bool = False,
                 max_reduction: Tuple[int, int] = (5, 5)):
        super().__init__()
        self.kernel_size, self.fast_imp, self.max_reduction = tuple(kernel_size), fast_imp, tuple(max_reduction)

    def extra_repr(self) -> str:
        return f"kernel_size={self.kernel_size}, fast_imp={self.fast_imp}"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        height, width = x.shape[-2:]
        if self.kernel_size[0] >= height and self.kernel_size[1] >= width:
            return F.adaptive_avg_pool2d(x, 1)
        if self.fast_imp:
            out = self._subsampled_means(x)
        else:
            out = F.avg_pool2d(x, (min(height, self.kernel_size[0]), min(width, self.kernel_size[1])), stride=1)
        dh, dw = height - out.shape[-2], width - out.shape[-1]
        return F.pad(out, (dw // 2, (dw + 1) // 2, dh // 2, (dh + 1) // 2), mode="replicate")

    def _subsampled_means(self, x: torch.Tensor) -> torch.Tensor:
        height, width = x.shape[-2:]
        r1 = min(self.max_reduction[0], next(r for r in self.REDUCTIONS if height % r == 0))
        r2 = min(self.max_reduction[1], next(r for r in self.REDUCTIONS if width % r == 0))
        sums = x[:, :, ::r1, ::r2].cumsum(dim=-1).cumsum(dim=-2)
        h, w = sums.shape[-2:]
        k1, k2 = min(h - 1, self.kernel_size[0] // r1), min(w - 1, self.kernel_size[1] // r2)
        out = (sums[:, :, :-k1, :-k2] - sums[:, :, :-k1, k2:] - sums[:, :, k1:, :-k2] + sums[:, :, k1:, k2:]) / (k1 * k2)
        return F.interpolate(out, scale_factor=(r1, r2))


class NAFNetLocal(NAFNet):
    """NAFNet with every SCA global pooling replaced by :class:`LocalAvgPool2d` (same state_dict keys).

    As in the official ``Local_Base.convert``: the window is 1.5x the training crop ``train_size``
    (N, C, H, W) at full resolution, scaled with each level's feature size (the feature size a
    ``train_size`` input has there, times 1.5).
    """

    def __init__(self, *args, train_size: Sequence[int] = (1, 3, 256, 256), fast_imp: bool = False, **kwargs):
        super().__init__(*args, **kwargs)
        train_h, train_w = train_size[-2:]
        base_h, base_w = int(train_h * 1.5), int(train_w * 1.5)
        padded_h, padded_w = (-(-train_h // self.padder_size) * self.padder_size,
                              -(-train_w // self.padder_size) * self.padder_size)
        levels = [(self.encoders[i], i) for i in range(len(self.encoders))]
        levels += [(self.middle_blks, len(self.encoders))]
        levels += [(self.decoders[i], len(self.encoders) - 1 - i) for i in range(len(self.decoders))]
        cap = LocalAvgPool2d.REDUCTIONS[0]
        for blocks, level in levels:
            feat_h, feat_w = padded_h >> level, padded_w >> level
            kernel = (feat_h * base_h // train_h, feat_w * base_w // train_w)
            reduction = (max(1, cap * feat_h // train_h), max(1, cap * feat_w // train_w))
            for block in blocks:
                block.sca[0] = LocalAvgPool2d(kernel, fast_imp=fast_imp, max_reduction=reduction)
