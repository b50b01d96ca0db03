"""DAT, the Dual Aggregation Transformer (Chen et al., "Dual Aggregation Transformer for Image
Super-Resolution", ICCV 2023), compatible with the official checkpoints.

Facts from zhengchen1999/DAT ``basicsr/archs/dat_arch.py`` (constructor arguments and defaults,
module, parameter and buffer names, forward) and ``options/Test/test_DAT_x4.yml`` (the published x4
configuration, :data:`DAT_X4`). Residual groups alternate two blocks: the spatial one (DSTB) splits the
channels in two halves that attend in rectangular windows (``split_size`` rows x columns, and the
transpose), with a dynamic relative-position bias; the channel one (DCTB) attends across channels.
Both mix their attention with a depth-wise conv branch through the adaptive interaction module
(BatchNorm'd channel and spatial maps). Some spatial blocks shift their windows and hold the masks
as buffers ``attn_mask_0``/``attn_mask_1`` built for ``img_size`` (9 x 2 x (16, 256, 256) in the x4
configuration); with ``rpe_biases``, ``relative_position_index`` and the BatchNorm statistics they
are all in the state dict, so a published file loads with ``strict=True``.

Differences from the official forward, none of which touches a weight:
* the masks of another (padded) size are built once per size in a cache shared by all blocks
  (:class:`models.windows.MaskCache`), where the official code rebuilds them in every block of
  every forward;
* any input size works as in the official code: each spatial attention zero-pads its q/k/v to a
  multiple of ``max(split_size)`` (:func:`models.padding.pad_to_multiple`) and crops back, the
  convolutions see the unpadded map;
* ``use_chk`` uses non-reentrant activation checkpointing.
"""
import functools

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from .padding import pad_to_multiple
from .windows import MaskCache, Upsample, drop_path_or_identity, shifted_window_mask, window_merge, window_partition

# options/Test/test_DAT_x4.yml network_g (14,802,051 parameters; 14,506,627 with upscale=1).
DAT_X4 = dict(upscale=4, in_chans=3, img_size=64, img_range=1.0, split_size=[8, 32], depth=[6, 6, 6, 6, 6, 6],
              embed_dim=180, num_heads=[6, 6, 6, 6, 6, 6], expansion_factor=4, resi_connection="1conv")
RGB_MEAN = (0.4488, 0.4371, 0.4040)
NUM_FEAT = 64


def is_shifted(rg_idx: int, b_idx: int) -> bool:
    """Whether block ``b_idx`` of residual group ``rg_idx`` shifts its windows (official schedule:
    blocks 2, 6, ... in even groups, 0, 4, ... in odd groups; only even blocks are spatial)."""
    if rg_idx % 2 == 0:
        return b_idx > 0 and (b_idx - 2) % 4 == 0
    return b_idx % 4 == 0


def dat_masks(split_size, shift_size, height: int, width: int):
    """The two masks of a shifted spatial block at (padded) size height x width: window-0 is
    split_size[0] x split_size[1] rolled by shift_size, window-1 the transpose of both."""
    mask_0 = shifted_window_mask(height, width, split_size[0], split_size[1], shift_size[0], shift_size[1])
    mask_1 = shifted_window_mask(height, width, split_size[1], split_size[0], shift_size[1], shift_size[0])
    return mask_0, mask_1


class SpatialGate(nn.Module):
    """Splits channels in halves x1, x2; returns x1 * dwconv(LN(x2))."""

    def __init__(self, dim: int):
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.conv = nn.Conv2d(dim, dim, 3, 1, 1, groups=dim)

    def forward(self, x, height, width):
        x1, x2 = x.chunk(2, dim=-1)
        batch, tokens, half = x2.shape
        x2 = self.norm(x2).transpose(1, 2).reshape(batch, half, height, width)
        return x1 * self.conv(x2).flatten(2).transpose(1, 2)


class SGFN(nn.Module):
    """Spatial-gate feed-forward network: fc1 - act - spatial gate - fc2."""

    def __init__(self, in_features, hidden_features=None, out_features=None, act_layer=nn.GELU, drop=0.0):
        super().__init__()
        hidden_features = hidden_features or in_features
        self.fc1 = nn.Linear(in_features, hidden_features)
        self.act = act_layer()
        self.sg = SpatialGate(hidden_features // 2)
        self.fc2 = nn.Linear(hidden_features // 2, out_features or in_features)
        self.drop = nn.Dropout(drop)

    def forward(self, x, height, width):
        x = self.drop(self.act(self.fc1(x)))
        x = self.drop(self.sg(x, height, width))
        return self.drop(self.fc2(x))


class DynamicPosBias(nn.Module):
    """MLP from (dy, dx) offsets to per-head biases (CrossFormer's dynamic position bias)."""

    def __init__(self, dim: int, num_heads: int, residual: bool):
        super().__init__()
        self.residual, self.num_heads, self.pos_dim = residual, num_heads, dim // 4
        self.pos_proj = nn.Linear(2, self.pos_dim)

        def stage(out_features):
            return nn.Sequential(nn.LayerNorm(self.pos_dim), nn.ReLU(inplace=True), nn.Linear(self.pos_dim, out_features))
        self.pos1, self.pos2, self.pos3 = stage(self.pos_dim), stage(self.pos_dim), stage(num_heads)

    def forward(self, biases):
        pos = self.pos_proj(biases)
        if self.residual:
            pos = pos + self.pos1(pos)
            pos = pos + self.pos2(pos)
            return self.pos3(pos)
        return self.pos3(self.pos2(self.pos1(pos)))


class Spatial_Attention(nn.Module):  # noqa: N801 - the official name
    """Self-attention in H_sp x W_sp windows (idx 0: split_size, idx 1: its transpose) with the
    dynamic position bias; returns (B, H, W, C) of the (padded) map."""

    def __init__(self, dim, idx, split_size=(8, 8), dim_out=None, num_heads=6, attn_drop=0.0, proj_drop=0.0,
                 qk_scale=None, position_bias=True):
        super().__init__()
        if idx not in (0, 1):
            raise ValueError(f"Spatial_Attention idx must be 0 or 1, got {idx}")
        self.dim, self.num_heads, self.idx, self.position_bias = dim, num_heads, idx, position_bias
        self.scale = qk_scale or (dim // num_heads) ** -0.5
        self.H_sp, self.W_sp = (split_size[0], split_size[1]) if idx == 0 else (split_size[1], split_size[0])
        if position_bias:
            self.pos = DynamicPosBias(dim // 4, num_heads, residual=False)
            offsets_h = torch.arange(1 - self.H_sp, self.H_sp)
            offsets_w = torch.arange(1 - self.W_sp, self.W_sp)
            biases = torch.stack(torch.meshgrid(offsets_h, offsets_w, indexing="ij")).flatten(1).t().float()
            self.register_buffer("rpe_biases", biases.contiguous())
            rows, cols = torch.meshgrid(torch.arange(self.H_sp), torch.arange(self.W_sp), indexing="ij")
            coords = torch.stack([rows.flatten(), cols.flatten()])
            delta = coords[:, :, None] - coords[:, None, :]
            index = (delta[0] + self.H_sp - 1) * (2 * self.W_sp - 1) + delta[1] + self.W_sp - 1
            self.register_buffer("relative_position_index", index)
        self.attn_drop = nn.Dropout(attn_drop)

    def _windows(self, x, height, width):
        """(B, L, C) tokens -> (B * windows, heads, H_sp * W_sp, C / heads)."""
        batch, _, channels = x.shape
        x = window_partition(x.reshape(batch, height, width, channels), self.H_sp, self.W_sp)
        return x.view(x.shape[0], x.shape[1], self.num_heads, -1).transpose(1, 2)

    def forward(self, qkv, height, width, mask=None):
        q, k, v = (self._windows(t, height, width) for t in qkv.unbind(0))
        windows, _, tokens, _ = q.shape
        bias = None
        if self.position_bias:
            pos = self.pos(self.rpe_biases)
            bias = pos[self.relative_position_index.view(-1)].view(tokens, tokens, -1).permute(2, 0, 1)
        if mask is not None:
            # (B, windows * heads, N, d) against a (1, windows * heads, N, N) bias: 4-D, so the fused
            # attention kernels apply, with the mask broadcast over the batch.
            num_masks = mask.shape[0]
            q, k, v = (t.reshape(windows // num_masks, num_masks * self.num_heads, tokens, -1) for t in (q, k, v))
            bias = mask[:, None] if bias is None else bias + mask[:, None]
            bias = bias.expand(num_masks, self.num_heads, tokens, tokens).reshape(1, -1, tokens, tokens)
        dropout = self.attn_drop.p if self.training else 0.0
        bias = bias.to(q.dtype) if bias is not None else None
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias, dropout_p=dropout, scale=self.scale)
        out = out.reshape(windows, self.num_heads, tokens, -1).transpose(1, 2).reshape(windows, tokens, -1)
        return window_merge(out, self.H_sp, self.W_sp, height, width)


def _interaction_branches(dim: int):
    """The depth-wise conv branch and the channel / spatial interaction maps of both DAT blocks."""
    dwconv = nn.Sequential(nn.Conv2d(dim, dim, 3, 1, 1, groups=dim), nn.BatchNorm2d(dim), nn.GELU())
    channel = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(dim, dim // 8, 1), nn.BatchNorm2d(dim // 8), nn.GELU(),
                            nn.Conv2d(dim // 8, dim, 1))
    spatial = nn.Sequential(nn.Conv2d(dim, dim // 16, 1), nn.BatchNorm2d(dim // 16), nn.GELU(), nn.Conv2d(dim // 16, 1, 1))
    return dwconv, channel, spatial


class Adaptive_Spatial_Attention(nn.Module):  # noqa: N801 - the official name
    """DSTB attention: two half-channel window attentions (window and transposed window), mixed with
    the conv branch: attention * sigmoid(channel map of conv), conv * sigmoid(spatial map of attention)."""

    def __init__(self, dim, num_heads, reso=64, split_size=(8, 8), shift_size=(1, 2), qkv_bias=False, qk_scale=None,
                 drop=0.0, attn_drop=0.0, rg_idx=0, b_idx=0):
        super().__init__()
        if not (0 <= shift_size[0] < split_size[0] and 0 <= shift_size[1] < split_size[1]):
            raise ValueError(f"shift_size {shift_size} must lie in [0, split_size {split_size})")
        self.dim, self.num_heads, self.split_size, self.shift_size = dim, num_heads, split_size, shift_size
        self.rg_idx, self.b_idx, self.patches_resolution = rg_idx, b_idx, reso
        self.shifted = is_shifted(rg_idx, b_idx)
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(drop)
        self.attns = nn.ModuleList([
            Spatial_Attention(dim // 2, idx=i, split_size=split_size, num_heads=num_heads // 2, dim_out=dim // 2,
                              qk_scale=qk_scale, attn_drop=attn_drop, proj_drop=drop, position_bias=True)
            for i in range(2)])
        masks = dat_masks(split_size, shift_size, reso, reso) if self.shifted else (None, None)
        self.register_buffer("attn_mask_0", masks[0])
        self.register_buffer("attn_mask_1", masks[1])
        self.dwconv, self.channel_interaction, self.spatial_interaction = _interaction_branches(dim)

    def forward(self, x, height, width, masks=None):
        """``masks``: the (mask_0, mask_1) of this padded size when it is not ``reso`` (the buffers)."""
        batch, tokens, channels = x.shape
        half = channels // 2
        qkv = self.qkv(x).view(batch, tokens, 3, channels).permute(2, 0, 1, 3)  # 3, B, L, C
        v = qkv[2].transpose(1, 2).reshape(batch, channels, height, width)
        padded, _ = pad_to_multiple(qkv.reshape(3 * batch, height, width, channels).permute(0, 3, 1, 2),
                                    max(self.split_size), mode="constant")
        padded_h, padded_w = padded.shape[-2:]
        qkv = padded.permute(0, 2, 3, 1).reshape(3, batch, padded_h, padded_w, channels)
        if self.shifted:
            if (padded_h, padded_w) == (self.patches_resolution, self.patches_resolution):
                masks = (self.attn_mask_0, self.attn_mask_1)
            s0, s1 = self.shift_size
            qkv_0 = torch.roll(qkv[..., :half], shifts=(-s0, -s1), dims=(2, 3))
            qkv_1 = torch.roll(qkv[..., half:], shifts=(-s1, -s0), dims=(2, 3))
            x1 = self.attns[0](qkv_0.reshape(3, batch, -1, half), padded_h, padded_w, mask=masks[0])
            x2 = self.attns[1](qkv_1.reshape(3, batch, -1, half), padded_h, padded_w, mask=masks[1])
            x1 = torch.roll(x1, shifts=(s0, s1), dims=(1, 2))
            x2 = torch.roll(x2, shifts=(s1, s0), dims=(1, 2))
        else:
            x1 = self.attns[0](qkv[..., :half].reshape(3, batch, -1, half), padded_h, padded_w)
            x2 = self.attns[1](qkv[..., half:].reshape(3, batch, -1, half), padded_h, padded_w)
        attended = torch.cat([x1[:, :height, :width], x2[:, :height, :width]], dim=-1).reshape(batch, tokens, channels)
        conv_x = self.dwconv(v)
        channel_map = self.channel_interaction(conv_x).view(batch, 1, channels)
        spatial_map = self.spatial_interaction(attended.transpose(1, 2).reshape(batch, channels, height, width))
        attended = attended * torch.sigmoid(channel_map)
        conv_x = (torch.sigmoid(spatial_map) * conv_x).flatten(2).transpose(1, 2)
        return self.proj_drop(self.proj(attended + conv_x))


class Adaptive_Channel_Attention(nn.Module):  # noqa: N801 - the official name
    """DCTB attention: attention across channels (L2-normalised q, k, learned temperature per head),
    mixed with the conv branch: attention * sigmoid(spatial map of conv), conv * sigmoid(channel map of attention)."""

    def __init__(self, dim, num_heads=8, qkv_bias=False, qk_scale=None, attn_drop=0.0, proj_drop=0.0):
        super().__init__()
        self.num_heads = num_heads
        self.temperature = nn.Parameter(torch.ones(num_heads, 1, 1))
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.attn_drop = nn.Dropout(attn_drop)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)
        self.dwconv, self.channel_interaction, self.spatial_interaction = _interaction_branches(dim)

    def forward(self, x, height, width, masks=None):
        batch, tokens, channels = x.shape
        qkv = self.qkv(x).view(batch, tokens, 3, self.num_heads, -1).permute(2, 0, 3, 4, 1)  # 3, B, h, d, L
        q, k, v = qkv.unbind(0)
        q, k = F.normalize(q, dim=-1), F.normalize(k, dim=-1)
        attn = self.attn_drop(torch.softmax((q @ k.transpose(-2, -1)) * self.temperature, dim=-1))
        attended = (attn @ v).permute(0, 3, 1, 2).reshape(batch, tokens, channels)
        conv_x = self.dwconv(v.reshape(batch, channels, height, width))
        channel_map = self.channel_interaction(attended.transpose(1, 2).reshape(batch, channels, height, width))
        spatial_map = self.spatial_interaction(conv_x).flatten(2).transpose(1, 2)  # B, L, 1
        attended = attended * torch.sigmoid(spatial_map)
        conv_x = (conv_x * torch.sigmoid(channel_map)).flatten(2).transpose(1, 2)
        return self.proj_drop(self.proj(attended + conv_x))


class DATB(nn.Module):
    """Dual aggregation block: x + attn(LN x), then x + SGFN(LN x); even blocks spatial, odd channel."""

    def __init__(self, dim, num_heads, reso=64, split_size=(2, 4), shift_size=(1, 2), expansion_factor=4.0,
                 qkv_bias=False, qk_scale=None, drop=0.0, attn_drop=0.0, drop_path=0.0, act_layer=nn.GELU,
                 norm_layer=nn.LayerNorm, rg_idx=0, b_idx=0):
        super().__init__()
        self.norm1 = norm_layer(dim)
        if b_idx % 2 == 0:
            self.attn = Adaptive_Spatial_Attention(dim, num_heads, reso, split_size, shift_size, qkv_bias, qk_scale,
                                                   drop, attn_drop, rg_idx, b_idx)
        else:
            self.attn = Adaptive_Channel_Attention(dim, num_heads, qkv_bias, qk_scale, attn_drop, drop)
        self.drop_path = drop_path_or_identity(drop_path)
        self.ffn = SGFN(dim, int(dim * expansion_factor), dim, act_layer)
        self.norm2 = norm_layer(dim)

    def forward(self, x, x_size, masks=None):
        height, width = x_size
        x = x + self.drop_path(self.attn(self.norm1(x), height, width, masks))
        return x + self.drop_path(self.ffn(self.norm2(x), height, width))


def _residual_conv(resi_connection: str, dim: int) -> nn.Module:
    if resi_connection == "1conv":
        return nn.Conv2d(dim, dim, 3, 1, 1)
    if resi_connection == "3conv":
        return nn.Sequential(nn.Conv2d(dim, dim // 4, 3, 1, 1), nn.LeakyReLU(0.2, inplace=True),
                             nn.Conv2d(dim // 4, dim // 4, 1, 1, 0), nn.LeakyReLU(0.2, inplace=True),
                             nn.Conv2d(dim // 4, dim, 3, 1, 1))
    raise ValueError(f"DAT resi_connection must be '1conv' or '3conv', got {resi_connection!r}")


class ResidualGroup(nn.Module):
    """``depth`` DATBs and a conv, with a residual connection around the group."""

    def __init__(self, dim, reso, num_heads, split_size=(2, 4), expansion_factor=4.0, qkv_bias=False, qk_scale=None,
                 drop=0.0, attn_drop=0.0, drop_paths=None, act_layer=nn.GELU, norm_layer=nn.LayerNorm, depth=2,
                 use_chk=False, resi_connection="1conv", rg_idx=0):
        super().__init__()
        self.use_chk, self.reso = use_chk, reso
        drop_paths = drop_paths if drop_paths is not None else [0.0] * depth
        self.blocks = nn.ModuleList([
            DATB(dim, num_heads, reso, split_size, [split_size[0] // 2, split_size[1] // 2], expansion_factor,
                 qkv_bias, qk_scale, drop, attn_drop, drop_paths[i], act_layer, norm_layer, rg_idx, i)
            for i in range(depth)])
        self.conv = _residual_conv(resi_connection, dim)

    def forward(self, x, x_size, masks=None):
        residual = x
        for block in self.blocks:
            if self.use_chk and self.training and torch.is_grad_enabled():
                x = checkpoint(block, x, x_size, masks, use_reentrant=False)
            else:
                x = block(x, x_size, masks)
        batch, _, channels = x.shape
        x = self.conv(x.transpose(1, 2).reshape(batch, channels, *x_size))
        return residual + x.flatten(2).transpose(1, 2)


class UpsampleOneStep(nn.Sequential):
    """One conv to scale^2 * out channels and a PixelShuffle (the lightweight head)."""

    def __init__(self, scale, num_feat, num_out_ch, input_resolution=None):
        super().__init__(nn.Conv2d(num_feat, scale ** 2 * num_out_ch, 3, 1, 1), nn.PixelShuffle(scale))


class _Tokens(nn.Module):
    """(B, C, H, W) -> (B, H*W, C)."""

    def forward(self, x):
        return x.flatten(2).transpose(1, 2)


class DAT(nn.Module):
    """Dual Aggregation Transformer with the official constructor (arguments and defaults).

    ``upsampler`` 'pixelshuffle' (the published models; ``upscale=1`` makes a restoration network at
    the input's size whose state dict lacks ``upsample.*``) or 'pixelshuffledirect'. Input
    (N, in_chans, H, W), any H x W; output (N, in_chans, upscale * H, upscale * W).
    """

    def __init__(self, img_size=64, in_chans=3, embed_dim=180, split_size=[2, 4], depth=[2, 2, 2, 2],
                 num_heads=[2, 2, 2, 2], expansion_factor=4.0, qkv_bias=True, qk_scale=None, drop_rate=0.0,
                 attn_drop_rate=0.0, drop_path_rate=0.1, act_layer=nn.GELU, norm_layer=nn.LayerNorm, use_chk=False,
                 upscale=2, img_range=1.0, resi_connection="1conv", upsampler="pixelshuffle", **kwargs):
        super().__init__()
        if upsampler not in ("pixelshuffle", "pixelshuffledirect"):
            raise ValueError(f"DAT upsampler must be 'pixelshuffle' or 'pixelshuffledirect', got {upsampler!r}")
        self.in_chans, self.img_range, self.upscale, self.upsampler = in_chans, img_range, upscale, upsampler
        self.split_size = list(split_size)
        if img_size % split_size[0] or img_size % split_size[1]:
            raise ValueError(f"DAT img_size {img_size} must be a multiple of both split_size {list(split_size)}")
        mean = torch.tensor(RGB_MEAN).view(1, 3, 1, 1) if in_chans == 3 else torch.zeros(1, 1, 1, 1)
        self.register_buffer("mean", mean, persistent=False)  # the official keeps it out of the state dict
        shift = [split_size[0] // 2, split_size[1] // 2]
        self.img_size = img_size
        self._masks = MaskCache(functools.partial(dat_masks, list(split_size), shift))

        self.conv_first = nn.Conv2d(in_chans, embed_dim, 3, 1, 1)
        self.num_layers, self.use_chk, self.num_features, self.embed_dim = len(depth), use_chk, embed_dim, embed_dim
        self.before_RG = nn.Sequential(_Tokens(), nn.LayerNorm(embed_dim))
        rates = torch.linspace(0, drop_path_rate, sum(depth), device="cpu").tolist()
        self.layers = nn.ModuleList([
            ResidualGroup(embed_dim, img_size, num_heads[i], split_size, expansion_factor, qkv_bias, qk_scale, drop_rate,
                          attn_drop_rate, rates[sum(depth[:i]):sum(depth[:i + 1])], act_layer, norm_layer, depth[i],
                          use_chk, resi_connection, rg_idx=i)
            for i in range(len(depth))])
        self.norm = norm_layer(embed_dim)
        self.conv_after_body = _residual_conv(resi_connection, embed_dim)
        if upsampler == "pixelshuffle":
            self.conv_before_upsample = nn.Sequential(nn.Conv2d(embed_dim, NUM_FEAT, 3, 1, 1), nn.LeakyReLU(inplace=True))
            self.upsample = Upsample(upscale, NUM_FEAT)
            self.conv_last = nn.Conv2d(NUM_FEAT, in_chans, 3, 1, 1)
        else:
            self.upsample = UpsampleOneStep(upscale, embed_dim, in_chans)
        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(module):
        if isinstance(module, nn.Linear):
            nn.init.trunc_normal_(module.weight, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, (nn.LayerNorm, nn.BatchNorm2d, nn.GroupNorm, nn.InstanceNorm2d)):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)

    @property
    def size_multiple(self) -> int:
        """Sides that need no padding inside the spatial attention (tiles are cut at multiples of it)."""
        return max(self.split_size)

    def shift_masks(self, height: int, width: int, device):
        """(mask_0, mask_1) of the shifted blocks at feature size height x width padded to
        :attr:`size_multiple`; None at ``img_size``, where the blocks use their buffers."""
        multiple = self.size_multiple
        padded_h, padded_w = -(-height // multiple) * multiple, -(-width // multiple) * multiple
        if (padded_h, padded_w) == (self.img_size, self.img_size):
            return None
        return self._masks(padded_h, padded_w, device)

    def forward_features(self, x):
        batch, channels, height, width = x.shape
        masks = self.shift_masks(height, width, x.device)
        x = self.before_RG(x)
        for layer in self.layers:
            x = layer(x, (height, width), masks)
        return self.norm(x).transpose(1, 2).reshape(batch, channels, height, width)

    def forward(self, x):
        if x.dim() != 4 or x.shape[1] != self.in_chans:
            raise ValueError(f"DAT expects input of shape (N, {self.in_chans}, H, W), got {tuple(x.shape)}")
        y = (x - self.mean) * self.img_range
        y = self.conv_first(y)
        y = self.conv_after_body(self.forward_features(y)) + y
        if self.upsampler == "pixelshuffle":
            y = self.conv_last(self.upsample(self.conv_before_upsample(y)))
        else:
            y = self.upsample(y)
        return y / self.img_range + self.mean
