"""Retinexformer: one-stage Retinex-based transformer for low-light enhancement (Cai et al., ICCV 2023).

Written from the paper and the official implementation's parameter layout
(github.com/caiyuanhao1998/Retinexformer, ``basicsr/models/archs/RetinexFormer_arch.py``, and the
``network_g`` entries of its ``Options/RetinexFormer_*.yml``): constructor arguments, their
defaults, module and parameter names and shapes match it, so the published ``{'params': ...}``
files load with ``strict=True``. The catalog configuration ``RetinexFormer(in_channels=3,
out_channels=3, n_feat=40, stage=1, num_blocks=[1, 2, 2])`` (the LOL / FiveK / NTIRE files) has
1,605,701 parameters.

Each stage is Retinex theory made trainable:

1. an illumination estimator reads the photo and its channel mean and returns features ``F`` and a
   3-channel map ``M``; the photo is lit up as ``I_lu = I * M + I = I * (1 + M)``, so ``1 + M`` is
   the per-pixel, per-channel light-up factor (what :meth:`RetinexFormer.illumination` returns);
2. a 3-level U-Net of illumination-guided transformer blocks restores ``I_lu``: each block's
   channel ("transposed") attention weights its values by the illumination features of that level,
   and the output is ``mapping(features) + I_lu``.

Additions over the official model (they change no parameter):

* any input size: the image is reflect-padded to a multiple of 4 -- the two stride-2 levels need it,
  and it is the padding factor of the official test script (``Enhancement/test_from_dataset.py``);
  padding further would change the global attention statistics -- and the output cropped back;
* inputs with more channels than RGB (RGB + feature maps): the estimator and the light-up see the
  RGB channels, the restorer sees the lit RGB plus the extra channels (every stage), and the
  residual adds the lit RGB;
* ``forward(x, return_illumination=True)`` also returns the first stage's light-up factor, the map
  a Retinex loss or a validation grid wants;
* ``grad_checkpoint=True`` recomputes each transformer block in the backward pass while training.
"""
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from .padding import pad_to_multiple

# Two stride-2 levels: the spatial size must be divisible by 2**2.
SIZE_MULTIPLE = 4
# The restorer has an encoder of this many levels in every official configuration.
LEVELS = 2
RGB = 3


class IlluminationEstimator(nn.Module):
    """``[I, mean_c(I)] -> 1x1 conv -> 5x5 grouped conv = F -> 1x1 conv = M`` (features, light-up map).

    The grouped convolution has 4 groups (one per input channel of the first conv, as official), so
    ``n_fea_middle`` must be divisible by 4.
    """

    def __init__(self, n_fea_middle: int, n_fea_in: int = 4, n_fea_out: int = 3):
        super().__init__()
        if n_fea_middle % n_fea_in:
            raise ValueError(f"n_feat ({n_fea_middle}) must be divisible by {n_fea_in}: the estimator's "
                             f"5x5 convolution has {n_fea_in} groups")
        self.conv1 = nn.Conv2d(n_fea_in, n_fea_middle, kernel_size=1, bias=True)
        self.depth_conv = nn.Conv2d(n_fea_middle, n_fea_middle, kernel_size=5, padding=2, bias=True,
                                    groups=n_fea_in)
        self.conv2 = nn.Conv2d(n_fea_middle, n_fea_out, kernel_size=1, bias=True)

    def forward(self, img: torch.Tensor):
        features = self.depth_conv(self.conv1(torch.cat([img, img.mean(dim=1, keepdim=True)], dim=1)))
        return features, self.conv2(features)


class PreNorm(nn.Module):
    """``fn(LayerNorm(x))`` on channels-last (N, H, W, C) features."""

    def __init__(self, dim: int, fn: nn.Module):
        super().__init__()
        self.fn = fn
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fn(self.norm(x))


class GELU(nn.Module):
    """GELU as a module (the official Sequential indices count it: ``net.0``, ``net.2``, ``net.4``)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.gelu(x)


class FeedForward(nn.Module):
    """1x1 conv (x mult) -> GELU -> 3x3 depth-wise conv -> GELU -> 1x1 conv, on (N, H, W, C) features."""

    def __init__(self, dim: int, mult: int = 4):
        super().__init__()
        hidden = dim * mult
        self.net = nn.Sequential(
            nn.Conv2d(dim, hidden, 1, 1, bias=False), GELU(),
            nn.Conv2d(hidden, hidden, 3, 1, 1, bias=False, groups=hidden), GELU(),
            nn.Conv2d(hidden, dim, 1, 1, bias=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)


class IGMSA(nn.Module):
    """Illumination-guided multi-head self-attention (the official ``IG_MSA``), on (N, H, W, C).

    Per head, with pixel-major q, k, v (n pixels x d channels) from linear maps of x and v multiplied
    by the illumination features ``L``: q and k are L2-normalised over the pixels and
    ``out = proj(softmax(rescale * k^T q) (v * L)^T) + pos_emb(v)`` -- a d x d attention map (the
    official order ``k @ q^T``), linear in the pixel count; ``pos_emb`` (two 3x3 depth-wise convs)
    runs on the un-weighted values.
    """

    def __init__(self, dim: int, dim_head: int = 64, heads: int = 8):
        super().__init__()
        self.num_heads = heads
        self.dim_head = dim_head
        inner = dim_head * heads
        self.to_q = nn.Linear(dim, inner, bias=False)
        self.to_k = nn.Linear(dim, inner, bias=False)
        self.to_v = nn.Linear(dim, inner, bias=False)
        self.rescale = nn.Parameter(torch.ones(heads, 1, 1))
        self.proj = nn.Linear(inner, dim, bias=True)
        self.pos_emb = nn.Sequential(
            nn.Conv2d(dim, dim, 3, 1, 1, bias=False, groups=dim), GELU(),
            nn.Conv2d(dim, dim, 3, 1, 1, bias=False, groups=dim))
        self.dim = dim

    def forward(self, x: torch.Tensor, illumination: torch.Tensor) -> torch.Tensor:
        batch, height, width, channels = x.shape
        tokens = x.reshape(batch, height * width, channels)
        value_input = self.to_v(tokens)

        def heads_major(t):  # (N, n, heads * d) -> (N, heads, d, n)
            return t.reshape(batch, height * width, self.num_heads, -1).permute(0, 2, 3, 1)

        query = F.normalize(heads_major(self.to_q(tokens)), dim=-1)
        key = F.normalize(heads_major(self.to_k(tokens)), dim=-1)
        value = heads_major(value_input * illumination.reshape(batch, height * width, -1))
        attention = ((key @ query.transpose(-2, -1)) * self.rescale).softmax(dim=-1)
        out = (attention @ value).permute(0, 3, 1, 2).reshape(batch, height * width, -1)
        out = self.proj(out).view(batch, height, width, channels)
        position = self.pos_emb(value_input.reshape(batch, height, width, channels).permute(0, 3, 1, 2))
        return out + position.permute(0, 2, 3, 1)


def run_blocks(blocks, step, x: torch.Tensor, *context, use_checkpoint: bool) -> torch.Tensor:
    """``x = step(block, x, *context)`` for each block, recomputed in backward when ``use_checkpoint``."""
    for block in blocks:
        if use_checkpoint and torch.is_grad_enabled():
            x = checkpoint(step, block, x, *context, use_reentrant=False)
        else:
            x = step(block, x, *context)
    return x


class IGAB(nn.Module):
    """Illumination-guided attention blocks: per block ``x + IGMSA(x, L)`` then ``x + FFN(LN(x))``.

    ``blocks[i]`` is ``ModuleList([IGMSA, PreNorm(FeedForward)])`` as official. (N, C, H, W) in and out.
    """

    def __init__(self, dim: int, dim_head: int = 64, heads: int = 8, num_blocks: int = 2):
        super().__init__()
        self.blocks = nn.ModuleList(
            nn.ModuleList([IGMSA(dim=dim, dim_head=dim_head, heads=heads), PreNorm(dim, FeedForward(dim=dim))])
            for _ in range(num_blocks))
        self.grad_checkpoint = False

    @staticmethod
    def _block(block: nn.ModuleList, x: torch.Tensor, illumination: torch.Tensor) -> torch.Tensor:
        attention, feed_forward = block
        x = attention(x, illumination) + x
        return feed_forward(x) + x

    def forward(self, x: torch.Tensor, illumination: torch.Tensor) -> torch.Tensor:
        x = run_blocks(self.blocks, self._block, x.permute(0, 2, 3, 1), illumination.permute(0, 2, 3, 1),
                       use_checkpoint=self.grad_checkpoint and self.training)
        return x.permute(0, 3, 1, 2)


class RetinexUNet(nn.Module):
    """The restorer U-Net both Retinex models share; ``block(width, num_blocks, heads, place)`` builds
    the guided blocks of one place: ``("encoder", i)`` and ``("decoder", i)`` for i = 0..level-1 in
    construction order (encoder i at 1/2**i resolution, decoder i at 1/2**(level-1-i)), and
    ``("bottleneck", level)``.

    ``embedding`` (3x3) -> per level: blocks, a stride-2 4x4 conv for the features and one for the
    illumination features -> bottleneck blocks -> per level: 2x2 transposed conv, 1x1 fusion with the
    skip, blocks -> ``mapping`` (3x3) + the first ``out_dim`` input channels.
    """

    def __init__(self, in_dim: int, out_dim: int, dim: int, level: int, num_blocks: Sequence[int], block):
        super().__init__()
        if len(num_blocks) != level + 1:
            raise ValueError(f"num_blocks needs {level + 1} entries (one per level and the bottleneck), "
                             f"got {list(num_blocks)}")
        self.dim, self.level, self.out_dim = dim, level, out_dim
        self.embedding = nn.Conv2d(in_dim, dim, 3, 1, 1, bias=False)
        self.encoder_layers = nn.ModuleList()
        width = dim
        for index in range(level):
            self.encoder_layers.append(nn.ModuleList([
                block(width, num_blocks[index], width // dim, ("encoder", index)),
                nn.Conv2d(width, width * 2, 4, 2, 1, bias=False),
                nn.Conv2d(width, width * 2, 4, 2, 1, bias=False)]))
            width *= 2
        self.bottleneck = block(width, num_blocks[-1], width // dim, ("bottleneck", level))
        self.decoder_layers = nn.ModuleList()
        for index in range(level):
            self.decoder_layers.append(nn.ModuleList([
                nn.ConvTranspose2d(width, width // 2, stride=2, kernel_size=2, padding=0, output_padding=0),
                nn.Conv2d(width, width // 2, 1, 1, bias=False),
                block(width // 2, num_blocks[level - 1 - index], width // 2 // dim, ("decoder", index))]))
            width //= 2
        self.mapping = nn.Conv2d(dim, out_dim, 3, 1, 1, bias=False)

    def forward(self, x: torch.Tensor, illumination: torch.Tensor) -> torch.Tensor:
        features = self.embedding(x)
        skips, guides = [], []
        for blocks, down, guide_down in self.encoder_layers:
            features = blocks(features, illumination)
            skips.append(features)
            guides.append(illumination)
            features, illumination = down(features), guide_down(illumination)
        features = self.bottleneck(features, illumination)
        for (up, fuse, blocks), skip, guide in zip(self.decoder_layers, reversed(skips), reversed(guides)):
            features = blocks(fuse(torch.cat([up(features), skip], dim=1)), guide)
        return self.mapping(features) + x[:, :self.out_dim]


def init_linear_and_norm(module: nn.Module) -> None:
    """The official restorer initialisation: Linear weights ~ truncated normal (std 0.02, cut at
    +-2), biases 0; LayerNorm weight 1, bias 0."""
    if isinstance(module, nn.Linear):
        nn.init.trunc_normal_(module.weight, std=0.02, a=-2.0, b=2.0)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)


class Denoiser(RetinexUNet):
    """Retinexformer's restorer: :class:`RetinexUNet` of :class:`IGAB` blocks (``dim_head = dim``,
    heads = width / dim)."""

    def __init__(self, in_dim: int = 3, out_dim: int = 3, dim: int = 31, level: int = 2,
                 num_blocks: Sequence[int] = (2, 4, 4)):
        super().__init__(in_dim, out_dim, dim, level, num_blocks,
                         lambda width, depth, heads, _: IGAB(dim=width, dim_head=dim, heads=heads, num_blocks=depth))
        self.apply(init_linear_and_norm)


class RetinexStage(nn.Module):
    """One stage: ``F, M = estimator(rgb)``, ``lit = rgb * M + rgb``,
    ``out = restorer(cat(lit, extras), F)``. ``restorer_name`` is the attribute the official
    checkpoints keep the restorer under."""

    def __init__(self, estimator: IlluminationEstimator, restorer: RetinexUNet, restorer_name: str):
        super().__init__()
        self.estimator = estimator
        self.restorer_name = restorer_name
        setattr(self, restorer_name, restorer)

    def forward(self, x: torch.Tensor):
        rgb, extras = x[:, :RGB], x[:, RGB:]
        features, light_map = self.estimator(rgb)
        lit = rgb * light_map + rgb
        out = getattr(self, self.restorer_name)(torch.cat([lit, extras], dim=1), features)
        return out, 1 + light_map


class RetinexModel(nn.Module):
    """Stages in ``body`` (an ``nn.Sequential``, as official) around padding, extra channels and the
    illumination output; the base of :class:`RetinexFormer` and ``models.retinexmamba.RetinexMamba``."""

    size_multiple = SIZE_MULTIPLE

    def __init__(self, in_channels: int, out_channels: int, stages: list, grad_checkpoint: bool):
        super().__init__()
        if out_channels != RGB or in_channels < RGB:
            raise ValueError(f"{type(self).__name__} maps RGB (+ extra channels) to RGB: needs out_channels=3 "
                             f"and in_channels >= 3, got in_channels={in_channels}, out_channels={out_channels}")
        self.in_channels, self.out_channels = in_channels, out_channels
        self.stage = len(stages)
        self.body = nn.Sequential(*stages)
        self.grad_checkpoint = grad_checkpoint

    @property
    def grad_checkpoint(self) -> bool:
        """Recompute every guided block in backward while training (assignable after construction)."""
        return self._grad_checkpoint

    @grad_checkpoint.setter
    def grad_checkpoint(self, enabled: bool) -> None:
        self._grad_checkpoint = bool(enabled)
        for module in self.modules():
            if module is not self and hasattr(module, "grad_checkpoint"):
                module.grad_checkpoint = self._grad_checkpoint

    def forward(self, x: torch.Tensor, return_illumination: bool = False):
        """(N, in_channels, H, W) of any H, W -> (N, 3, H, W); with ``return_illumination`` also the
        first stage's light-up factor ``1 + M`` (N, 3, H, W): its lit image is ``rgb * (1 + M)``."""
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"{type(self).__name__} expects input of shape (N, {self.in_channels}, H, W), "
                             f"got {tuple(x.shape)}")
        padded, (height, width) = pad_to_multiple(x, self.size_multiple)
        extras = padded[:, RGB:]
        out, light_up = self.body[0](padded)
        for stage in self.body[1:]:
            out, _ = stage(torch.cat([out, extras], dim=1))
        out = out[..., :height, :width]
        return (out, light_up[..., :height, :width]) if return_illumination else out

    def illumination(self, x: torch.Tensor) -> torch.Tensor:
        """The first stage's light-up factor ``1 + M`` for ``x`` (estimator only, no restorer)."""
        padded, (height, width) = pad_to_multiple(x, self.size_multiple)
        _, light_map = self.body[0].estimator(padded[:, :RGB])
        return (1 + light_map)[..., :height, :width]


class RetinexFormer(RetinexModel):
    """Retinexformer: ``stage`` x (illumination estimator + illumination-guided transformer U-Net).

    Constructor arguments are the official ones with the official defaults (``n_feat=31, stage=3,
    num_blocks=[1, 1, 1]``); the published files use ``n_feat=40, stage=1, num_blocks=[1, 2, 2]``
    (:meth:`catalog`). ``n_feat`` must be divisible by 4 -- so the official default 31 cannot be built,
    in the official code either; every option file passes it. ``grad_checkpoint`` (keyword-only) recomputes
    blocks in backward. See the module docstring for the forward pass and the additions.
    """

    def __init__(self, in_channels: int = 3, out_channels: int = 3, n_feat: int = 31, stage: int = 3,
                 num_blocks: Sequence[int] = (1, 1, 1), *, grad_checkpoint: bool = False):
        stages = [RetinexStage(IlluminationEstimator(n_feat),
                               Denoiser(in_dim=in_channels, out_dim=out_channels, dim=n_feat, level=LEVELS,
                                        num_blocks=num_blocks), "denoiser")
                  for _ in range(stage)]
        super().__init__(in_channels, out_channels, stages, grad_checkpoint)

    @classmethod
    def catalog(cls, **overrides) -> "RetinexFormer":
        """The configuration of the published LOL / FiveK / NTIRE weights (1,605,701 parameters)."""
        return cls(**{"n_feat": 40, "stage": 1, "num_blocks": [1, 2, 2], **overrides})
