"""A small colour refiner on top of a frozen backbone's output (the catalog's "Elite colour refiner").

Input: the backbone's output and the as-shot photo, stacked as 6 channels (backbone first), so the
refiner sees both the edit and what the photo held before it (the clipped windows). Output: the
backbone's output plus a learned residual::

    low  = blocks(conv_in(avg_pool(x, scale)))          # context at 1/scale resolution
    full = conv_full(x) + upsample(low)                  # full-resolution detail path
    out  = x[:, :3] + conv_out(gelu(full))               # conv_out zero-initialised

``conv_out`` starts at zero, so before training the refined output equals the backbone's output
exactly: the refiner can only start from what the backbone already achieves.

The blocks follow NAFNet's baseline block (Chen et al. 2022, "Simple Baselines for Image
Restoration": channel LayerNorm, 1x1 expansion, 3x3 depth-wise conv, SimpleGate, 1x1 projection,
zero-initialised residual scales ``beta``/``gamma``) without its simplified channel attention: that
pools over the whole image, so a tile's output would depend on the tile, and the refiner must give
the same result in tiles (production) as on training crops. Every operation here is local.
"""
import torch
import torch.nn.functional as F
from torch import nn

from .padding import pad_to_multiple


class ChannelLayerNorm(nn.Module):
    """LayerNorm over the channels of each pixel of an NCHW tensor."""

    def __init__(self, channels: int):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))

    def forward(self, x):
        x = x.permute(0, 2, 3, 1)
        x = F.layer_norm(x, x.shape[-1:], self.weight, self.bias, eps=1e-6)
        return x.permute(0, 3, 1, 2)


class RefinerBlock(nn.Module):
    """NAFNet's baseline block without channel attention: two gated residual branches."""

    def __init__(self, width: int):
        super().__init__()
        self.norm1 = ChannelLayerNorm(width)
        self.expand = nn.Conv2d(width, 2 * width, 1)
        self.depthwise = nn.Conv2d(2 * width, 2 * width, 3, padding=1, groups=2 * width)
        self.project = nn.Conv2d(width, width, 1)
        self.norm2 = ChannelLayerNorm(width)
        self.ffn_expand = nn.Conv2d(width, 2 * width, 1)
        self.ffn_project = nn.Conv2d(width, width, 1)
        self.beta = nn.Parameter(torch.zeros(1, width, 1, 1))
        self.gamma = nn.Parameter(torch.zeros(1, width, 1, 1))

    @staticmethod
    def gate(x):
        first, second = x.chunk(2, dim=1)
        return first * second

    def forward(self, x):
        x = x + self.beta * self.project(self.gate(self.depthwise(self.expand(self.norm1(x)))))
        return x + self.gamma * self.ffn_project(self.gate(self.ffn_expand(self.norm2(x))))


class ColorRefiner(nn.Module):
    """Backbone output + learned residual from (backbone output, photo); see the module docstring.

    in_channels: 3 backbone channels + 3 photo channels. width: channels of the blocks. num_blocks:
    blocks at the reduced resolution. scale: the reduction (average pooling) of the context path.
    """

    def __init__(self, in_channels: int = 6, out_channels: int = 3, width: int = 32, num_blocks: int = 4,
                 scale: int = 4):
        super().__init__()
        if in_channels <= out_channels or scale < 1:
            raise ValueError(f"ColorRefiner needs in_channels > out_channels (the backbone output comes first) "
                             f"and scale >= 1, got {in_channels}, {out_channels}, {scale}")
        self.out_channels, self.scale = out_channels, scale
        self.size_multiple = scale
        self.conv_in = nn.Conv2d(in_channels, width, 3, padding=1)
        self.blocks = nn.Sequential(*[RefinerBlock(width) for _ in range(num_blocks)])
        self.conv_full = nn.Conv2d(in_channels, width, 1)
        self.conv_out = nn.Conv2d(width, out_channels, 3, padding=1)
        nn.init.zeros_(self.conv_out.weight)
        nn.init.zeros_(self.conv_out.bias)

    def forward(self, x):
        padded, (height, width) = pad_to_multiple(x, self.scale)
        low = self.blocks(self.conv_in(F.avg_pool2d(padded, self.scale) if self.scale > 1 else padded))
        if self.scale > 1:
            low = F.interpolate(low, scale_factor=self.scale, mode="bilinear", align_corners=False)
        residual = self.conv_out(F.gelu(self.conv_full(padded) + low))
        return x[:, :self.out_channels] + residual[..., :height, :width]
