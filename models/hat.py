"""HAT, the Hybrid Attention Transformer (Chen et al., "Activating More Pixels in Image
Super-Resolution Transformer", CVPR 2023), compatible with the official checkpoints.

Facts from XPixelGroup/HAT ``hat/archs/hat_arch.py`` (constructor arguments and defaults, module and
parameter names, forward) and ``options/test/HAT_SRx4.yml`` (the published x4 configuration, see
:data:`HAT_SRX4`): residual hybrid attention groups (RHAG) of hybrid attention blocks (HAB: (shifted)
window self-attention plus a channel-attention conv branch scaled by ``conv_scale``) and one
overlapping cross-attention block (OCAB: queries in ``window_size`` windows, keys/values in windows
enlarged by ``overlap_ratio``). The relative-position indices are the persistent int64 buffers
``relative_position_index_SA`` (ws^2, ws^2) and ``relative_position_index_OCA`` (ws^2, ows^2), so a
published file loads with ``strict=True`` (``params_ema`` through :func:`utils.checkpoint.load_pretrained`).

Differences from the official forward, none of which touches a weight:
* any input size: the input is reflect-padded to a multiple of ``window_size`` (what the official
  test pipeline does outside the network) and the output is cropped back to ``upscale`` x the input;
* the shifted-window mask is built once per padded size (:class:`models.windows.MaskCache`), not in
  every forward;
* ``use_checkpoint`` (accepted but unused upstream) checkpoints the activations of each block.
"""
import functools

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from .padding import pad_to_multiple
from .windows import MaskCache, Upsample, drop_path_or_identity, shifted_window_mask, window_merge, window_partition

# options/test/HAT_SRx4.yml network_g (20,772,507 parameters; 20,477,083 with upscale=1).
HAT_SRX4 = dict(upscale=4, in_chans=3, img_size=64, window_size=16, compress_ratio=3, squeeze_factor=30,
                conv_scale=0.01, overlap_ratio=0.5, img_range=1.0, depths=[6, 6, 6, 6, 6, 6], embed_dim=180,
                num_heads=[6, 6, 6, 6, 6, 6], mlp_ratio=2, upsampler="pixelshuffle", resi_connection="1conv")
RGB_MEAN = (0.4488, 0.4371, 0.4040)  # DIV2K mean the official models subtract
NUM_FEAT = 64  # channels of the reconstruction head


def _grid(size: int) -> torch.Tensor:
    """(2, size * size) row and column coordinates of a size x size window, row-major."""
    rows, cols = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    return torch.stack([rows.flatten(), cols.flatten()])


def self_attention_index(window_size: int) -> torch.Tensor:
    """(ws^2, ws^2) int64 index into the (2 ws - 1)^2 bias table: (query - key) offsets, as in Swin."""
    delta = _grid(window_size)[:, :, None] - _grid(window_size)[:, None, :] + window_size - 1
    return delta[0] * (2 * window_size - 1) + delta[1]


def overlap_attention_index(window_size: int, overlap_size: int) -> torch.Tensor:
    """(ws^2, ows^2) int64 index into the (ws + ows - 1)^2 bias table of the overlapping
    cross-attention: (key - query) offsets shifted by ws - ows + 1. As in the official code the
    smallest offsets come out negative and so index the table from its end; the published weights
    were trained with exactly this index."""
    delta = _grid(overlap_size)[:, None, :] - _grid(window_size)[:, :, None] + window_size - overlap_size + 1
    return delta[0] * (window_size + overlap_size - 1) + delta[1]


def _attend(q, k, v, bias, scale: float, dropout: float):
    """softmax(q k^T * scale + bias) v over (..., heads, tokens, dim) through the fused kernel."""
    return F.scaled_dot_product_attention(q, k, v, attn_mask=bias.to(q.dtype), dropout_p=dropout, scale=scale)


def _hat_mask(window_size: int, shift_size: int, height: int, width: int) -> torch.Tensor:
    return shifted_window_mask(height, width, window_size, window_size, shift_size, shift_size)


class ChannelAttention(nn.Module):
    """Squeeze-and-excitation of RCAN: x * sigmoid(conv(relu(conv(mean over space))))."""

    def __init__(self, num_feat: int, squeeze_factor: int = 16):
        super().__init__()
        self.attention = nn.Sequential(
            nn.AdaptiveAvgPool2d(1), nn.Conv2d(num_feat, num_feat // squeeze_factor, 1),
            nn.ReLU(inplace=True), nn.Conv2d(num_feat // squeeze_factor, num_feat, 1), nn.Sigmoid())

    def forward(self, x):
        return x * self.attention(x)


class CAB(nn.Module):
    """Channel attention block: conv - GELU - conv - channel attention."""

    def __init__(self, num_feat: int, compress_ratio: int = 3, squeeze_factor: int = 30):
        super().__init__()
        self.cab = nn.Sequential(
            nn.Conv2d(num_feat, num_feat // compress_ratio, 3, 1, 1), nn.GELU(),
            nn.Conv2d(num_feat // compress_ratio, num_feat, 3, 1, 1), ChannelAttention(num_feat, squeeze_factor))

    def forward(self, x):
        return self.cab(x)


class Mlp(nn.Module):
    def __init__(self, in_features: int, hidden_features: int, act_layer=nn.GELU, drop: float = 0.0):
        super().__init__()
        self.fc1 = nn.Linear(in_features, hidden_features)
        self.act = act_layer()
        self.fc2 = nn.Linear(hidden_features, in_features)
        self.drop = nn.Dropout(drop)

    def forward(self, x):
        return self.drop(self.fc2(self.drop(self.act(self.fc1(x)))))


class WindowAttention(nn.Module):
    """Multi-head self-attention inside windows with a learned relative-position bias table."""

    def __init__(self, dim, window_size, num_heads, qkv_bias=True, qk_scale=None, attn_drop=0.0, proj_drop=0.0):
        super().__init__()
        self.dim, self.window_size, self.num_heads = dim, window_size, num_heads
        self.scale = qk_scale or (dim // num_heads) ** -0.5
        self.relative_position_bias_table = nn.Parameter(torch.zeros((2 * window_size - 1) ** 2, num_heads))
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.attn_drop = nn.Dropout(attn_drop)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)
        nn.init.trunc_normal_(self.relative_position_bias_table, std=0.02)

    def forward(self, x, rpi, mask=None):
        """x (B * windows, N, C); ``mask`` (windows, N, N) for shifted windows or None."""
        windows, tokens, channels = x.shape
        qkv = self.qkv(x).reshape(windows, tokens, 3, self.num_heads, channels // self.num_heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
        bias = self.relative_position_bias_table[rpi.view(-1)].view(tokens, tokens, -1).permute(2, 0, 1)
        if mask is not None:
            # (B, windows * heads, N, d) against a (1, windows * heads, N, N) bias: 4-D, so the fused
            # attention kernels apply, with the mask broadcast over the batch.
            num_masks = mask.shape[0]
            q, k, v = (t.reshape(windows // num_masks, num_masks * self.num_heads, tokens, -1) for t in (q, k, v))
            bias = (bias + mask[:, None]).reshape(1, num_masks * self.num_heads, tokens, tokens)
        dropout = self.attn_drop.p if self.training else 0.0
        out = _attend(q, k, v, bias, self.scale, dropout).reshape(windows, self.num_heads, tokens, -1)
        return self.proj_drop(self.proj(out.transpose(1, 2).reshape(windows, tokens, channels)))


class HAB(nn.Module):
    """Hybrid attention block: x + (S)W-MSA(LN x) + conv_scale * CAB(LN x), then x + MLP(LN x)."""

    def __init__(self, dim, input_resolution, num_heads, window_size=7, shift_size=0, compress_ratio=3,
                 squeeze_factor=30, conv_scale=0.01, mlp_ratio=4.0, qkv_bias=True, qk_scale=None, drop=0.0,
                 attn_drop=0.0, drop_path=0.0, act_layer=nn.GELU, norm_layer=nn.LayerNorm):
        super().__init__()
        self.window_size, self.shift_size, self.conv_scale = window_size, shift_size, conv_scale
        if min(input_resolution) <= window_size:  # official: no shift when one window covers img_size
            self.shift_size, self.window_size = 0, min(input_resolution)
        self.norm1 = norm_layer(dim)
        self.attn = WindowAttention(dim, self.window_size, num_heads, qkv_bias, qk_scale, attn_drop, drop)
        self.conv_block = CAB(dim, compress_ratio, squeeze_factor)
        self.drop_path = drop_path_or_identity(drop_path)
        self.norm2 = norm_layer(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), act_layer, drop)

    def forward(self, x, x_size, rpi_sa, attn_mask):
        height, width = x_size
        batch, _, channels = x.shape
        shortcut = x
        x = self.norm1(x).view(batch, height, width, channels)
        conv_x = self.conv_block(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1).reshape(batch, -1, channels)
        shift = self.shift_size
        if shift:
            x = torch.roll(x, shifts=(-shift, -shift), dims=(1, 2))
        windows = window_partition(x, self.window_size, self.window_size)
        windows = self.attn(windows, rpi_sa, attn_mask if shift else None)
        x = window_merge(windows, self.window_size, self.window_size, height, width)
        if shift:
            x = torch.roll(x, shifts=(shift, shift), dims=(1, 2))
        x = shortcut + self.drop_path(x.reshape(batch, -1, channels)) + conv_x * self.conv_scale
        return x + self.drop_path(self.mlp(self.norm2(x)))


class OCAB(nn.Module):
    """Overlapping cross-attention block: queries of each window attend to keys/values of the window
    enlarged by ``overlap_ratio`` (zero-padded at the borders), then an MLP."""

    def __init__(self, dim, input_resolution, window_size, overlap_ratio, num_heads, qkv_bias=True, qk_scale=None,
                 mlp_ratio=2, norm_layer=nn.LayerNorm):
        super().__init__()
        self.dim, self.window_size, self.num_heads = dim, window_size, num_heads
        self.scale = qk_scale or (dim // num_heads) ** -0.5
        self.overlap_win_size = int(window_size * overlap_ratio) + window_size
        self.norm1 = norm_layer(dim)
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.relative_position_bias_table = nn.Parameter(
            torch.zeros((window_size + self.overlap_win_size - 1) ** 2, num_heads))
        nn.init.trunc_normal_(self.relative_position_bias_table, std=0.02)
        self.proj = nn.Linear(dim, dim)
        self.norm2 = norm_layer(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x, x_size, rpi):
        height, width = x_size
        batch, _, channels = x.shape
        ws, ows, heads = self.window_size, self.overlap_win_size, self.num_heads
        shortcut = x
        qkv = self.qkv(self.norm1(x)).view(batch, height, width, 3, channels)
        q = window_partition(qkv[..., 0, :], ws, ws)  # B*nw, ws*ws, C
        kv = qkv[..., 1:, :].permute(0, 3, 4, 1, 2).reshape(batch, 2 * channels, height, width)
        kv = F.unfold(kv, kernel_size=ows, stride=ws, padding=(ows - ws) // 2)  # B, 2*C*ows*ows, nw
        kv = kv.view(batch, 2, channels, ows * ows, -1).permute(1, 0, 4, 3, 2).reshape(2, -1, ows * ows, channels)
        windows, queries = q.shape[:2]
        q = q.view(windows, queries, heads, -1).transpose(1, 2)
        k, v = (t.view(windows, ows * ows, heads, -1).transpose(1, 2) for t in kv.unbind(0))
        bias = self.relative_position_bias_table[rpi.view(-1)].view(queries, ows * ows, -1).permute(2, 0, 1)
        out = _attend(q, k, v, bias, self.scale, 0.0)
        out = window_merge(out.transpose(1, 2).reshape(windows, queries, channels), ws, ws, height, width)
        x = self.proj(out.reshape(batch, -1, channels)) + shortcut
        return x + self.mlp(self.norm2(x))


class AttenBlocks(nn.Module):
    """``depth`` HABs (odd ones shifted by half a window) followed by one OCAB."""

    def __init__(self, dim, input_resolution, depth, num_heads, window_size, compress_ratio, squeeze_factor,
                 conv_scale, overlap_ratio, mlp_ratio=4.0, qkv_bias=True, qk_scale=None, drop=0.0, attn_drop=0.0,
                 drop_path=0.0, norm_layer=nn.LayerNorm, use_checkpoint=False):
        super().__init__()
        self.use_checkpoint = use_checkpoint
        self.blocks = nn.ModuleList([
            HAB(dim, input_resolution, num_heads, window_size, 0 if i % 2 == 0 else window_size // 2,
                compress_ratio, squeeze_factor, conv_scale, mlp_ratio, qkv_bias, qk_scale, drop, attn_drop,
                drop_path[i] if isinstance(drop_path, list) else drop_path, norm_layer=norm_layer)
            for i in range(depth)])
        self.overlap_attn = OCAB(dim, input_resolution, window_size, overlap_ratio, num_heads, qkv_bias, qk_scale,
                                 mlp_ratio, norm_layer)

    def forward(self, x, x_size, params):
        for block in self.blocks:
            if self.use_checkpoint and self.training and torch.is_grad_enabled():
                x = checkpoint(block, x, x_size, params["rpi_sa"], params["attn_mask"], use_reentrant=False)
            else:
                x = block(x, x_size, params["rpi_sa"], params["attn_mask"])
        return self.overlap_attn(x, x_size, params["rpi_oca"])


class RHAG(nn.Module):
    """Residual hybrid attention group: x + conv(attention blocks(x)) (tokens <-> image around the conv)."""

    def __init__(self, dim, input_resolution, depth, num_heads, window_size, compress_ratio, squeeze_factor,
                 conv_scale, overlap_ratio, mlp_ratio=4.0, qkv_bias=True, qk_scale=None, drop=0.0, attn_drop=0.0,
                 drop_path=0.0, norm_layer=nn.LayerNorm, use_checkpoint=False, resi_connection="1conv"):
        super().__init__()
        self.residual_group = AttenBlocks(dim, input_resolution, depth, num_heads, window_size, compress_ratio,
                                          squeeze_factor, conv_scale, overlap_ratio, mlp_ratio, qkv_bias, qk_scale,
                                          drop, attn_drop, drop_path, norm_layer, use_checkpoint)
        self.conv = _residual_conv(resi_connection, dim)

    def forward(self, x, x_size, params):
        batch, _, channels = x.shape
        y = self.residual_group(x, x_size, params).transpose(1, 2).reshape(batch, channels, *x_size)
        return self.conv(y).flatten(2).transpose(1, 2) + x


def _residual_conv(resi_connection: str, dim: int) -> nn.Module:
    if resi_connection == "1conv":
        return nn.Conv2d(dim, dim, 3, 1, 1)
    if resi_connection == "identity":
        return nn.Identity()
    raise ValueError(f"HAT resi_connection must be '1conv' or 'identity', got {resi_connection!r}")


class _PatchNorm(nn.Module):
    """The official ``patch_embed``: (B, C, H, W) -> (B, H*W, C) tokens, LayerNorm'd when ``patch_norm``."""

    def __init__(self, embed_dim: int, norm_layer):
        super().__init__()
        self.norm = norm_layer(embed_dim) if norm_layer is not None else None

    def forward(self, x):
        x = x.flatten(2).transpose(1, 2)
        return self.norm(x) if self.norm is not None else x


class HAT(nn.Module):
    """Hybrid Attention Transformer with the official constructor (arguments and defaults).

    ``upsampler``: the official default ``''`` builds no reconstruction head and the official forward
    then returns its input unchanged (so does this one); ``'pixelshuffle'`` is the head of every
    published model and of the scripts here (with ``upscale=1`` a restoration network at the input's
    size, whose x1 state dict lacks the ``upsample.*`` keys). Input: (N, in_chans, H, W), any H x W;
    output (N, in_chans, upscale * H, upscale * W).
    """

    def __init__(self, img_size=64, patch_size=1, in_chans=3, embed_dim=96, depths=(6, 6, 6, 6),
                 num_heads=(6, 6, 6, 6), window_size=7, compress_ratio=3, squeeze_factor=30, conv_scale=0.01,
                 overlap_ratio=0.5, mlp_ratio=4.0, qkv_bias=True, qk_scale=None, drop_rate=0.0, attn_drop_rate=0.0,
                 drop_path_rate=0.1, norm_layer=nn.LayerNorm, ape=False, patch_norm=True, use_checkpoint=False,
                 upscale=2, img_range=1.0, upsampler="", resi_connection="1conv", **kwargs):
        super().__init__()
        if upsampler not in ("", "pixelshuffle"):
            raise ValueError(f"HAT upsampler must be 'pixelshuffle' or '' (no head), got {upsampler!r}")
        self.in_chans, self.window_size, self.shift_size = in_chans, window_size, window_size // 2
        self.overlap_ratio, self.img_range, self.upscale, self.upsampler = overlap_ratio, img_range, upscale, upsampler
        self.ape = ape
        mean = torch.tensor(RGB_MEAN).view(1, 3, 1, 1) if in_chans == 3 else torch.zeros(1, 1, 1, 1)
        self.register_buffer("mean", mean, persistent=False)  # the official keeps it out of the state dict
        overlap_size = window_size + int(overlap_ratio * window_size)
        self.register_buffer("relative_position_index_SA", self_attention_index(window_size))
        self.register_buffer("relative_position_index_OCA", overlap_attention_index(window_size, overlap_size))
        self._masks = MaskCache(functools.partial(_hat_mask, window_size, self.shift_size))

        self.conv_first = nn.Conv2d(in_chans, embed_dim, 3, 1, 1)
        img_h, img_w = (img_size, img_size) if isinstance(img_size, int) else img_size
        resolution = (img_h // patch_size, img_w // patch_size)
        self.patch_embed = _PatchNorm(embed_dim, norm_layer if patch_norm else None)
        if ape:
            self.absolute_pos_embed = nn.Parameter(torch.zeros(1, resolution[0] * resolution[1], embed_dim))
            nn.init.trunc_normal_(self.absolute_pos_embed, std=0.02)
        self.pos_drop = nn.Dropout(drop_rate)
        rates = torch.linspace(0, drop_path_rate, sum(depths), device="cpu").tolist()
        self.layers = nn.ModuleList([
            RHAG(embed_dim, resolution, depths[i], num_heads[i], window_size, compress_ratio,
                 squeeze_factor, conv_scale, overlap_ratio, mlp_ratio, qkv_bias, qk_scale, drop_rate, attn_drop_rate,
                 rates[sum(depths[:i]):sum(depths[:i + 1])], norm_layer, use_checkpoint, resi_connection)
            for i in range(len(depths))])
        self.norm = norm_layer(embed_dim)
        self.conv_after_body = _residual_conv(resi_connection, embed_dim)
        if upsampler == "pixelshuffle":
            self.conv_before_upsample = nn.Sequential(nn.Conv2d(embed_dim, NUM_FEAT, 3, 1, 1), nn.LeakyReLU(inplace=True))
            self.upsample = Upsample(upscale, NUM_FEAT)
            self.conv_last = nn.Conv2d(NUM_FEAT, in_chans, 3, 1, 1)
        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(module):
        if isinstance(module, nn.Linear):
            nn.init.trunc_normal_(module.weight, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.LayerNorm):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)

    @property
    def size_multiple(self) -> int:
        """Sides that need no padding inside the network (tiles are cut at multiples of it)."""
        return self.window_size

    def forward_features(self, x):
        x_size = tuple(x.shape[-2:])
        params = {"attn_mask": self._masks(*x_size, x.device), "rpi_sa": self.relative_position_index_SA,
                  "rpi_oca": self.relative_position_index_OCA}
        batch, channels = x.shape[:2]
        x = self.patch_embed(x)
        if self.ape:
            x = x + self.absolute_pos_embed
        x = self.pos_drop(x)
        for layer in self.layers:
            x = layer(x, x_size, params)
        return self.norm(x).transpose(1, 2).reshape(batch, channels, *x_size)

    def forward(self, x):
        if x.dim() != 4 or x.shape[1] != self.in_chans:
            raise ValueError(f"HAT expects input of shape (N, {self.in_chans}, H, W), got {tuple(x.shape)}")
        if self.upsampler != "pixelshuffle":
            return x  # the official forward with no head: (x - mean) * range / range + mean
        padded, (height, width) = pad_to_multiple(x, self.window_size)
        y = (padded - self.mean) * self.img_range
        y = self.conv_first(y)
        y = self.conv_after_body(self.forward_features(y)) + y
        y = self.conv_last(self.upsample(self.conv_before_upsample(y)))
        y = y / self.img_range + self.mean
        return y[..., :height * self.upscale, :width * self.upscale]
