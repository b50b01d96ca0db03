"""MambaIR: a simple baseline for image restoration with state-space models (Guo et al., ECCV 2024).

Two networks, written from the official code's facts (github.com/csguoh/MambaIR):

* :class:`MambaIR` -- ``basicsr/archs/mambair_arch.py``: conv -> residual state-space groups (RSSG,
  each ``depth`` VSS blocks + a conv, with a skip) at full resolution -> conv, a global residual and
  the RGB-mean shift. Colour-denoising config (``options/test/mambair/test_MambaIR_ColorDN_level*.yml``:
  ``upscale=1, img_size=128, embed_dim=180, depths=[6]*6, mlp_ratio=1.2, d_state=16``): 15,777,507
  parameters.
* :class:`MambaIRUNet` -- ``realDenoising/basicsr/models/archs/mambairunet_arch.py``: Restormer's 4-level
  U-Net with VSS blocks in place of the transformer blocks (every level ``d_state`` 16).
  Real-denoising config (``realDenoising/options/train_MambaIR_RealDN.yml``: ``dim=48,
  num_blocks=[4,6,6,8], num_refinement_blocks=4, mlp_ratio=1.5``): 26,779,480 parameters.

A VSS block (both networks): ``x = x * skip_scale + drop_path(SS2D(ln_1(x)))``, then
``x = x * skip_scale2 + CAB(ln_2(x))`` with CAB = conv3x3 (C -> C/3), GELU, conv3x3 (-> C), RCAN
channel attention (squeeze to C // 30). :class:`models.ss2d.SS2D` holds the selective scan.

Constructor arguments are the official ones with the official defaults, and module/parameter names and
shapes match, so official ``{'params': ...}`` / ``{'params_ema': ...}`` files load with ``strict=True``.
Neither network has a state_dict buffer (MambaIR's RGB mean is a non-persistent constant, as the
official plain attribute). Additions that change no parameter:

* any H x W: MambaIR works at any size as is; the U-Net reflect-pads to a multiple of 8 and crops back;
* more input than output channels (RGB + feature maps): the global residual adds the first
  ``out_channels`` input channels (``MambaIR(out_chans=...)``; the U-Net's ``out_channels``);
* ``grad_checkpoint=True`` (MambaIR also honours the official ``use_checkpoint``) recomputes every VSS
  block in the backward pass while training.

Not included: MambaIR's super-resolution upsamplers (``upsampler='pixelshuffle'`` /
``'pixelshuffledirect'``) -- this library restores at the input size; they raise a ValueError.
"""

from collections.abc import Sequence

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from .padding import pad_to_multiple
from .restormer import Downsample, OverlapPatchEmbed, Upsample
from .ss2d import SS2D

RGB_MEAN = (0.4488, 0.4371, 0.4040)  # MambaIR's input shift for 3-channel images (official value)
UNET_SIZE_MULTIPLE = 8  # three 2x downsamplings
UNET_D_STATE = 16  # the official U-Net's state size at every level (base 4 * 2**2, latent 4 / 2 * 2**3)


class DropPath(nn.Module):
    """Stochastic depth: while training, zero a sample's branch with probability ``drop_prob`` and
    scale the kept ones by 1 / (1 - drop_prob); the identity at evaluation."""

    def __init__(self, drop_prob: float = 0.0):
        super().__init__()
        self.drop_prob = float(drop_prob)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.drop_prob == 0.0 or not self.training:
            return x
        keep = 1.0 - self.drop_prob
        mask = x.new_empty((x.shape[0],) + (1,) * (x.dim() - 1)).bernoulli_(keep)
        return x * mask / keep


class ChannelAttention(nn.Module):
    """RCAN channel attention: global average pool -> 1x1 squeeze -> ReLU -> 1x1 excite -> sigmoid gate."""

    def __init__(self, num_feat: int, squeeze_factor: int = 16):
        super().__init__()
        if num_feat // squeeze_factor < 1:
            raise ValueError(f"channel attention squeezes {num_feat} channels by {squeeze_factor} to none: "
                             f"every width of the network must be at least {squeeze_factor} (e.g. dim/embed_dim >= {squeeze_factor})")
        self.attention = nn.Sequential(
            nn.AdaptiveAvgPool2d(1), nn.Conv2d(num_feat, num_feat // squeeze_factor, 1), nn.ReLU(inplace=True),
            nn.Conv2d(num_feat // squeeze_factor, num_feat, 1), nn.Sigmoid())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.attention(x)


class CAB(nn.Module):
    """Channel-attention block: conv3x3 to C / compress_ratio, GELU, conv3x3 back, channel attention."""

    def __init__(self, num_feat: int, compress_ratio: int = 3, squeeze_factor: int = 30):
        super().__init__()
        self.cab = nn.Sequential(
            nn.Conv2d(num_feat, num_feat // compress_ratio, 3, 1, 1), nn.GELU(),
            nn.Conv2d(num_feat // compress_ratio, num_feat, 3, 1, 1), ChannelAttention(num_feat, squeeze_factor))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.cab(x)


class VSSBlock(nn.Module):
    """Visual state-space block on channels-last (B, H, W, C) features (see the module docstring)."""

    def __init__(self, hidden_dim: int, drop_path: float = 0.0, d_state: int = 16, expand: float = 2.0):
        super().__init__()
        self.ln_1 = nn.LayerNorm(hidden_dim)
        self.self_attention = SS2D(d_model=hidden_dim, d_state=d_state, expand=expand)
        self.drop_path = DropPath(drop_path)
        self.skip_scale = nn.Parameter(torch.ones(hidden_dim))
        self.conv_blk = CAB(hidden_dim)
        self.ln_2 = nn.LayerNorm(hidden_dim)
        self.skip_scale2 = nn.Parameter(torch.ones(hidden_dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x * self.skip_scale + self.drop_path(self.self_attention(self.ln_1(x)))
        local = self.conv_blk(self.ln_2(x).permute(0, 3, 1, 2).contiguous()).permute(0, 2, 3, 1)
        return x * self.skip_scale2 + local


def _run_blocks(blocks, x: torch.Tensor, recompute: bool) -> torch.Tensor:
    """VSS blocks on channels-last ``x``; with ``recompute``, each is re-run in the backward pass."""
    for block in blocks:
        x = checkpoint(block, x, use_reentrant=False) if recompute else block(x)
    return x


def _check_channels(inp_channels: int, out_channels: int) -> None:
    if inp_channels < out_channels:
        raise ValueError(f"input channels ({inp_channels}) must be >= output channels ({out_channels}): "
                         "the residual adds the first output channels of the input")


class _BlockStack(nn.Module):
    """The official BasicLayer: ``blocks``, one ModuleList of VSS blocks."""

    def __init__(self, dim: int, depth: int, d_state: int, mlp_ratio: float, drop_path: Sequence[float]):
        super().__init__()
        self.blocks = nn.ModuleList(
            VSSBlock(dim, drop_path=drop_path[i], d_state=d_state, expand=mlp_ratio) for i in range(depth))


class _ResidualGroup(nn.Module):
    """RSSG: VSS blocks, then a conv ('1conv': 3x3; '3conv': 3x3 to C/4, 1x1, 3x3 back), plus the input."""

    def __init__(self, dim: int, depth: int, d_state: int, mlp_ratio: float, drop_path: Sequence[float],
                 resi_connection: str):
        super().__init__()
        self.residual_group = _BlockStack(dim, depth, d_state, mlp_ratio, drop_path)
        self.conv = _residual_conv(dim, resi_connection)

    def forward(self, x: torch.Tensor, recompute: bool) -> torch.Tensor:
        y = _run_blocks(self.residual_group.blocks, x, recompute)
        return self.conv(y.permute(0, 3, 1, 2)).permute(0, 2, 3, 1) + x


def _residual_conv(dim: int, resi_connection: str) -> nn.Module:
    if resi_connection == "1conv":
        return nn.Conv2d(dim, dim, 3, 1, 1)
    if resi_connection == "3conv":
        return nn.Sequential(
            nn.Conv2d(dim, dim // 4, 3, 1, 1), nn.LeakyReLU(negative_slope=0.2, inplace=True),
            nn.Conv2d(dim // 4, dim // 4, 1, 1, 0), nn.LeakyReLU(negative_slope=0.2, inplace=True),
            nn.Conv2d(dim // 4, dim, 3, 1, 1))
    raise ValueError(f"resi_connection must be '1conv' or '3conv', got {resi_connection!r}")


class _PatchEmbed(nn.Module):
    """The official PatchEmbed at patch size 1: (B, C, H, W) -> channels-last, optional layer norm."""

    def __init__(self, embed_dim: int, norm_layer=None):
        super().__init__()
        self.norm = norm_layer(embed_dim) if norm_layer is not None else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.permute(0, 2, 3, 1)
        return self.norm(x) if self.norm is not None else x


class MambaIR(nn.Module):
    """MambaIR for restoration at the input size (the official ``upsampler=''`` denoising path).

    Constructor arguments are the official ones and defaults; ``img_size``, ``patch_size`` (1) and
    ``upscale`` are accepted for option-file compatibility and do not change the network (any input size
    works). Keyword-only extras: ``out_chans`` (default ``in_chans``, as official) and ``grad_checkpoint``.
    Input (N, in_chans, H, W); output (N, out_chans, H, W).
    """

    def __init__(self, img_size=64, patch_size=1, in_chans=3, embed_dim=96, depths=(6, 6, 6, 6), drop_rate=0.0,
                 d_state=16, mlp_ratio=2.0, drop_path_rate=0.1, norm_layer=nn.LayerNorm, patch_norm=True,
                 use_checkpoint=False, upscale=2, img_range=1.0, upsampler="", resi_connection="1conv",
                 *, out_chans=None, grad_checkpoint=False, **kwargs):
        super().__init__()
        if upsampler:
            raise ValueError(f"MambaIR upsampler {upsampler!r} (super-resolution) is not supported: this "
                             "library restores at the input size (upsampler='')")
        if patch_size != 1:
            raise ValueError(f"MambaIR patch_size must be 1 (as every official config), got {patch_size}")
        out_chans = in_chans if out_chans is None else out_chans
        _check_channels(in_chans, out_chans)
        self.in_chans, self.out_chans = in_chans, out_chans
        self.img_size, self.upscale, self.upsampler = img_size, upscale, upsampler
        self.img_range = img_range
        self.mlp_ratio = mlp_ratio
        self.grad_checkpoint = bool(grad_checkpoint or use_checkpoint)
        mean = torch.tensor(RGB_MEAN).view(1, 3, 1, 1) if in_chans == 3 else torch.zeros(1, 1, 1, 1)
        self.register_buffer("mean", mean, persistent=False)

        self.conv_first = nn.Conv2d(in_chans, embed_dim, 3, 1, 1)
        self.patch_embed = _PatchEmbed(embed_dim, norm_layer if patch_norm else None)
        self.pos_drop = nn.Dropout(p=drop_rate)
        rates = torch.linspace(0, drop_path_rate, sum(depths), device="cpu").tolist()  # stochastic depth decay rule
        starts = [sum(depths[:i]) for i in range(len(depths))]
        self.layers = nn.ModuleList(
            _ResidualGroup(embed_dim, depth, d_state, mlp_ratio, rates[start:start + depth], resi_connection)
            for start, depth in zip(starts, depths))
        self.norm = norm_layer(embed_dim)
        self.conv_after_body = _residual_conv(embed_dim, resi_connection)
        self.conv_last = nn.Conv2d(embed_dim, out_chans, 3, 1, 1)
        self.apply(_init_weights)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        recompute = self.grad_checkpoint and self.training and torch.is_grad_enabled()
        x = self.pos_drop(self.patch_embed(x))
        for layer in self.layers:
            x = layer(x, recompute)
        return self.norm(x).permute(0, 3, 1, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4 or x.shape[1] != self.in_chans:
            raise ValueError(f"MambaIR expects input of shape (N, {self.in_chans}, H, W), got {tuple(x.shape)}")
        mean = self.mean.to(x.dtype)
        x = (x - mean) * self.img_range
        first = self.conv_first(x)
        res = self.conv_after_body(self.forward_features(first)) + first
        out = x[:, :self.out_chans] + self.conv_last(res)
        return out / self.img_range + mean[:, :self.out_chans]


def _init_weights(module: nn.Module) -> None:
    """The official init: truncated-normal (std 0.02) Linear weights, zero biases, unit LayerNorms."""
    if isinstance(module, nn.Linear):
        nn.init.trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)


class MambaIRUNet(nn.Module):
    """MambaIR's real-denoising U-Net (official arguments and defaults; ``mlp_ratio`` is SS2D's expand).

    Output is ``output(features) + input[:, :out_channels]``, or without the residual (and with the
    official level-1 skip conv) when ``dual_pixel_task``. Keyword-only extra: ``grad_checkpoint``.
    Input (N, inp_channels, H, W) of any H, W; output (N, out_channels, H, W).
    """

    def __init__(self, inp_channels=3, out_channels=3, dim=48, num_blocks=(4, 6, 6, 8), mlp_ratio=2.0,
                 num_refinement_blocks=4, drop_path_rate=0.0, bias=False, dual_pixel_task=False,
                 *, grad_checkpoint=False):
        super().__init__()
        if len(num_blocks) != 4:
            raise ValueError(f"num_blocks needs one entry per level (4), got {list(num_blocks)}")
        if not dual_pixel_task:
            _check_channels(inp_channels, out_channels)
        self.inp_channels, self.out_channels = inp_channels, out_channels
        self.mlp_ratio = mlp_ratio
        self.grad_checkpoint = grad_checkpoint
        widths = [dim, dim * 2, dim * 4, dim * 8]

        def stage(width: int, depth: int) -> nn.ModuleList:
            return nn.ModuleList(VSSBlock(width, drop_path_rate, UNET_D_STATE, mlp_ratio) for _ in range(depth))

        self.patch_embed = OverlapPatchEmbed(inp_channels, dim)
        self.encoder_level1 = stage(widths[0], num_blocks[0])
        self.down1_2 = Downsample(widths[0])
        self.encoder_level2 = stage(widths[1], num_blocks[1])
        self.down2_3 = Downsample(widths[1])
        self.encoder_level3 = stage(widths[2], num_blocks[2])
        self.down3_4 = Downsample(widths[2])
        self.latent = stage(widths[3], num_blocks[3])
        self.up4_3 = Upsample(widths[3])
        self.reduce_chan_level3 = nn.Conv2d(widths[3], widths[2], kernel_size=1, bias=bias)
        self.decoder_level3 = stage(widths[2], num_blocks[2])
        self.up3_2 = Upsample(widths[2])
        self.reduce_chan_level2 = nn.Conv2d(widths[2], widths[1], kernel_size=1, bias=bias)
        self.decoder_level2 = stage(widths[1], num_blocks[1])
        # Level 1 keeps the concatenated 2*dim width (no channel reduction), as official.
        self.up2_1 = Upsample(widths[1])
        self.decoder_level1 = stage(widths[1], num_blocks[0])
        self.refinement = stage(widths[1], num_refinement_blocks)
        self.dual_pixel_task = dual_pixel_task
        if dual_pixel_task:
            self.skip_conv = nn.Conv2d(dim, widths[1], kernel_size=1, bias=bias)
        self.output = nn.Conv2d(widths[1], out_channels, kernel_size=3, stride=1, padding=1, bias=bias)

    def _stage(self, blocks: nn.ModuleList, x: torch.Tensor) -> torch.Tensor:
        """Run VSS blocks on (N, C, H, W) features (they work channels-last)."""
        recompute = self.grad_checkpoint and self.training and torch.is_grad_enabled()
        return _run_blocks(blocks, x.permute(0, 2, 3, 1), recompute).permute(0, 3, 1, 2)

    def forward(self, inp_img: torch.Tensor) -> torch.Tensor:
        if inp_img.dim() != 4 or inp_img.shape[1] != self.inp_channels:
            raise ValueError(f"MambaIRUNet expects input of shape (N, {self.inp_channels}, H, W), "
                             f"got {tuple(inp_img.shape)}")
        padded, (height, width) = pad_to_multiple(inp_img, UNET_SIZE_MULTIPLE)
        inp_enc_level1 = self.patch_embed(padded)
        out_enc_level1 = self._stage(self.encoder_level1, inp_enc_level1)
        out_enc_level2 = self._stage(self.encoder_level2, self.down1_2(out_enc_level1))
        out_enc_level3 = self._stage(self.encoder_level3, self.down2_3(out_enc_level2))
        latent = self._stage(self.latent, self.down3_4(out_enc_level3))

        inp_dec_level3 = self.reduce_chan_level3(torch.cat([self.up4_3(latent), out_enc_level3], 1))
        out_dec_level3 = self._stage(self.decoder_level3, inp_dec_level3)
        inp_dec_level2 = self.reduce_chan_level2(torch.cat([self.up3_2(out_dec_level3), out_enc_level2], 1))
        out_dec_level2 = self._stage(self.decoder_level2, inp_dec_level2)
        inp_dec_level1 = torch.cat([self.up2_1(out_dec_level2), out_enc_level1], 1)
        out_dec_level1 = self._stage(self.refinement, self._stage(self.decoder_level1, inp_dec_level1))

        if self.dual_pixel_task:
            return self.output(out_dec_level1 + self.skip_conv(inp_enc_level1))[..., :height, :width]
        return self.output(out_dec_level1)[..., :height, :width] + inp_img[:, :self.out_channels]
