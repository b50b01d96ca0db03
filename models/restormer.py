"""Restormer: Efficient Transformer for High-Resolution Image Restoration (Zamir et al., CVPR 2022).

Written from the paper and the official implementation's parameter layout (github.com/swz30/Restormer,
``basicsr/models/archs/restormer_arch.py``): submodule and parameter names and shapes match it, so the
published checkpoints (``{'params': state_dict}``) load with ``strict=True``.

Additions over the official model (they change no parameter):

* any input size: the image is reflect-padded to a multiple of 8 and the output cropped back;
* inputs with more channels than outputs (RGB + extra feature maps): the global residual adds the
  first ``out_channels`` input channels;
* the transformer blocks compute in (N, H, W, C) layout (the model's activations are channels_last):
  layer norm over contiguous channels, 1x1 convolutions as matmuls on the weight viewed as a matrix
  with the residual added inside the matmul, depthwise 3x3 on channels_last memory, and the gated
  FFN's halves widened with zero channels to multiples of 16 (vector-aligned rows); on CPU the matmuls
  are oneDNN's and, without gradients, gelu and the gate product run fused into the FFN's depthwise
  convolutions (:mod:`models.onednn`);
* ``attention='fused'`` (default) forms the logits from the Gram matrix of the unnormalised q, k
  divided by their norms, and folds ``project_out`` into the attention map, so the pixels meet one
  C x C matrix; ``'matmul'`` spells the attention out as the official code does; both give the same
  result (the fast path's timings, and the ``scaled_dot_product_attention`` kernel it replaced:
  README "Speed");
* ``grad_checkpoint=True`` recomputes each transformer block in the backward pass while training,
  trading compute for activation memory.
"""

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from .onednn import depthwise_gelu_gate, linear
from .padding import pad_to_multiple

ATTENTION_KINDS = ("fused", "matmul")
LAYER_NORM_TYPES = ("WithBias", "BiasFree")
# Three 2x downsamplings: the spatial size must be divisible by 2**3.
SIZE_MULTIPLE = 8
LAYER_NORM_EPS = 1e-5
# Channel counts of the gated FFN's hidden tensors are rounded up to this (zeros): rows of a multiple
# of 16 floats (64 bytes) keep the CPU matmuls vectorised and aligned (README "Speed":
# tools/bench_fastpath.py ops, 48 -> 254 vs 48 -> 256 channels).
CHANNEL_ALIGNMENT = 16


def _check_attention_kind(kind: str) -> str:
    if kind not in ATTENTION_KINDS:
        raise ValueError(f"attention must be one of {ATTENTION_KINDS}, got {kind!r}")
    return kind


class _WithBiasNorm(nn.Module):
    """Layer norm over the last axis: ``(x - mean) / sqrt(var + eps) * weight + bias``."""

    def __init__(self, channels: int):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.layer_norm(x, self.weight.shape, self.weight, self.bias, LAYER_NORM_EPS)


class _BiasFreeNorm(nn.Module):
    """Scale-only layer norm over the last axis: ``x / sqrt(var + eps) * weight`` (the mean is not subtracted).

    Written by hand: neither ``F.layer_norm`` (subtracts the mean) nor ``F.rms_norm`` (divides by the root
    mean square, not the standard deviation) computes this.
    """

    def __init__(self, channels: int):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        variance = x.var(dim=-1, keepdim=True, unbiased=False)
        return x * torch.rsqrt(variance + LAYER_NORM_EPS) * self.weight


class LayerNorm(nn.Module):
    """Per-pixel layer norm over the channels of an (N, C, H, W) tensor.

    ``LayerNorm_type`` is ``'WithBias'`` (affine weight and bias) or ``'BiasFree'`` (weight only, no mean
    subtraction). The parameters live in ``.body`` as in the official checkpoints.
    """

    def __init__(self, channels: int, LayerNorm_type: str):
        super().__init__()
        self.body = _BiasFreeNorm(channels) if LayerNorm_type == "BiasFree" else _WithBiasNorm(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)

    def forward_nhwc(self, x: torch.Tensor) -> torch.Tensor:
        """The same norm of a (N, H, W, C) tensor: one pass over contiguous channels."""
        return self.body(x)


def _pointwise(x: torch.Tensor, conv: nn.Conv2d, residual: torch.Tensor | None = None) -> torch.Tensor:
    """``residual + conv(x)`` (or ``conv(x)``) for a 1x1 ``conv`` on (N, H, W, C) tensors: a matmul with its
    weight viewed as a matrix, the residual added inside it."""
    return linear(x, conv.weight.view(conv.out_channels, conv.in_channels), conv.bias, residual)


def _widen(tensor: torch.Tensor | None, width: int, rows: slice = slice(None)) -> torch.Tensor | None:
    """``tensor[rows]`` padded with zeros along its first axis to ``width`` entries (None stays None)."""
    if tensor is None:
        return None
    tensor = tensor[rows]
    return F.pad(tensor, (0, 0) * (tensor.dim() - 1) + (0, width - tensor.shape[0]))


def _depthwise(x: torch.Tensor, conv: nn.Conv2d) -> torch.Tensor:
    """A depthwise ``conv`` applied to (N, H, W, C) ``x`` through channels_last memory (no copies)."""
    return conv(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)


class FeedForward(nn.Module):
    """Gated-Dconv feed-forward network (GDFN): ``project_out(gelu(a) * b)``, ``a, b = dwconv(project_in(x))``."""

    def __init__(self, dim: int, ffn_expansion_factor: float, bias: bool):
        super().__init__()
        hidden = int(dim * ffn_expansion_factor)
        self.project_in = nn.Conv2d(dim, hidden * 2, kernel_size=1, bias=bias)
        self.dwconv = nn.Conv2d(hidden * 2, hidden * 2, kernel_size=3, padding=1, groups=hidden * 2, bias=bias)
        self.project_out = nn.Conv2d(hidden, dim, kernel_size=1, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, value = self.dwconv(self.project_in(x)).chunk(2, dim=1)
        return self.project_out(F.gelu(gate) * value)

    def forward_nhwc(self, x: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        """``residual + self(x)`` on (N, H, W, C) tensors (the layout of :meth:`TransformerBlock.forward`).

        The gate and value halves run as two contiguous tensors, each widened with zero channels to a
        multiple of ``CHANNEL_ALIGNMENT`` (Base: 127 -> 128); the zeros stay zero (gelu(0) * 0) and meet
        zero columns of ``project_out``, so the result is unchanged. Without gradients, on CPU, gelu and the
        product are fused into the depthwise convolutions (:func:`models.onednn.depthwise_gelu_gate`).
        """
        if torch.onnx.is_in_onnx_export():
            # An ONNX convolution needs a constant kernel, not one sliced and padded per call: the plain widths.
            gate, value = _depthwise(_pointwise(x, self.project_in), self.dwconv).chunk(2, dim=-1)
            return _pointwise(F.gelu(gate) * value, self.project_out, residual)
        hidden = self.project_out.in_channels
        width = -(-hidden // CHANNEL_ALIGNMENT) * CHANNEL_ALIGNMENT
        weight_in = self.project_in.weight.view(2 * hidden, -1)
        halves = (slice(0, hidden), slice(hidden, 2 * hidden))
        gate, value = (  # (N, C, H, W) views of contiguous (N, H, W, C) tensors: channels_last memory
            linear(x, _widen(weight_in[half], width), _widen(self.project_in.bias, width, half)).permute(0, 3, 1, 2)
            for half in halves
        )
        gated = depthwise_gelu_gate(gate, value, *(_widen(self.dwconv.weight[half], width) for half in halves),
                                    *(_widen(self.dwconv.bias, width, half) for half in halves))
        weight_out = F.pad(self.project_out.weight.view(-1, hidden), (0, width - hidden))
        return linear(gated.permute(0, 2, 3, 1), weight_out, self.project_out.bias, residual)


class Attention(nn.Module):
    """Multi-Dconv head transposed attention (MDTA): attention across channels instead of pixels.

    Per head, with q, k, v of shape (C_head, H*W) and q, k L2-normalised over the pixels:
    ``out = softmax(temperature * q k^T) v`` -- a C_head x C_head attention map, linear in the pixel count.
    ``attention`` selects the kernel: ``'fused'`` (see :meth:`_fused`) or ``'matmul'`` (explicit, as the
    official code); the same result.
    """

    def __init__(self, dim: int, num_heads: int, bias: bool, attention: str = "fused"):
        super().__init__()
        self.num_heads = num_heads
        self.attention = _check_attention_kind(attention)
        self.temperature = nn.Parameter(torch.ones(num_heads, 1, 1))
        self.qkv = nn.Conv2d(dim, dim * 3, kernel_size=1, bias=bias)
        self.qkv_dwconv = nn.Conv2d(dim * 3, dim * 3, kernel_size=3, padding=1, groups=dim * 3, bias=bias)
        self.project_out = nn.Conv2d(dim, dim, kernel_size=1, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_nhwc(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)

    def forward_nhwc(self, x: torch.Tensor, residual: torch.Tensor | None = None) -> torch.Tensor:
        """``residual + self(x)`` (or ``self(x)``) on (N, H, W, C) tensors, the layout of
        :meth:`TransformerBlock.forward`."""
        batch, height, width, channels = x.shape
        heads, head_channels = self.num_heads, channels // self.num_heads
        qkv = _depthwise(_pointwise(x, self.qkv), self.qkv_dwconv).reshape(batch, height * width, 3 * channels)
        if self.attention == "fused":
            return self._fused(qkv, residual, x.shape[:-1])
        query, key, value = qkv.split(channels, dim=-1)  # (N, pixels, C) views
        # Per head (C_head, pixels) matrices, as the official code lays them out.
        query, key, value = (t.unflatten(-1, (heads, head_channels)).permute(0, 2, 3, 1) for t in (query, key, value))
        query, key = F.normalize(query, dim=-1), F.normalize(key, dim=-1)
        out = ((query @ key.transpose(-2, -1)) * self.temperature).softmax(dim=-1) @ value
        return _pointwise(out.permute(0, 3, 1, 2).reshape(x.shape), self.project_out, residual)

    def _fused(self, qkv: torch.Tensor, residual: torch.Tensor | None, shape: torch.Size) -> torch.Tensor:
        """The attention and ``project_out`` from ``qkv`` (N, pixels, 3C) in two pixel-sized matmuls.

        q_hat k_hat^T = (q k^T) / (|q| |k|^T) gives the logits without normalising q and k themselves (the
        norms clamped at 1e-12 as in ``F.normalize``), and since ``project_out`` is linear,
        ``W concat_h(A_h v_h) = (W blockdiag(A_h)) v``: the C x C product is formed first (tiny) and the
        pixels meet it once, added to the residual inside the matmul.
        """
        batch, pixels, channels = qkv.shape[0], qkv.shape[1], qkv.shape[2] // 3
        heads, head_channels = self.num_heads, channels // self.num_heads
        query, key, value = qkv.split(channels, dim=-1)  # (N, pixels, C) views
        per_head = (batch, pixels, heads, head_channels)
        gram = query.view(per_head).permute(0, 2, 3, 1) @ key.view(per_head).transpose(1, 2)  # (N, heads, Ch, Ch)
        # Norms over the pixels as sums of squares; clamping them at 1e-24 is F.normalize's clamp of the norm
        # at 1e-12 (vector_norm is not faster: tools/bench_fastpath.py ops). Taken of the q and k views,
        # not of one qkv[..., :2C] slice, whose backward would write a zero-filled (N, pixels, 3C) tensor.
        query_norm = query.square().sum(dim=1).clamp_min(1e-24).sqrt().reshape(batch, heads, head_channels, 1)
        key_norm = key.square().sum(dim=1).clamp_min(1e-24).sqrt().reshape(batch, heads, 1, head_channels)
        attention = (gram / (query_norm * key_norm) * self.temperature).softmax(dim=-1)
        weight = self.project_out.weight.view(channels, heads, head_channels).permute(1, 2, 0)  # (heads, Ch, C_out)
        mixing = (attention.transpose(-2, -1) @ weight).reshape(batch, channels, channels)
        if residual is None:
            out = value @ mixing
        else:
            out = torch.baddbmm(residual.reshape(batch, pixels, channels), value, mixing)
        if self.project_out.bias is not None:
            out = out + self.project_out.bias
        return out.view(*shape, channels)


class TransformerBlock(nn.Module):
    """Pre-norm block: ``x + attn(norm1(x))`` then ``x + ffn(norm2(x))``."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        ffn_expansion_factor: float,
        bias: bool,
        LayerNorm_type: str,
        attention: str = "fused",
    ):
        super().__init__()
        self.norm1 = LayerNorm(dim, LayerNorm_type)
        self.attn = Attention(dim, num_heads, bias, attention)
        self.norm2 = LayerNorm(dim, LayerNorm_type)
        self.ffn = FeedForward(dim, ffn_expansion_factor, bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # (N, C, H, W) in channels_last memory is a contiguous (N, H, W, C) tensor: the norms run over
        # contiguous channels and every 1x1 convolution is a plain matmul, with no copies in between.
        x = x.contiguous(memory_format=torch.channels_last).permute(0, 2, 3, 1)
        x = self.attn.forward_nhwc(self.norm1.forward_nhwc(x), x)
        return self.ffn.forward_nhwc(self.norm2.forward_nhwc(x), x).permute(0, 3, 1, 2)


class OverlapPatchEmbed(nn.Module):
    """3x3 convolution from image channels to the embedding width (bias-free, as official)."""

    def __init__(self, in_c: int = 3, embed_dim: int = 48, bias: bool = False):
        super().__init__()
        self.proj = nn.Conv2d(in_c, embed_dim, kernel_size=3, padding=1, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x)


class Downsample(nn.Module):
    """Halve the resolution and double the width: 3x3 conv to C/2 channels, then pixel-unshuffle by 2."""

    def __init__(self, n_feat: int):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(n_feat, n_feat // 2, kernel_size=3, padding=1, bias=False), nn.PixelUnshuffle(2)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


class Upsample(nn.Module):
    """Double the resolution and halve the width: 3x3 conv to 2C channels, then pixel-shuffle by 2."""

    def __init__(self, n_feat: int):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(n_feat, n_feat * 2, kernel_size=3, padding=1, bias=False), nn.PixelShuffle(2)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


class Restormer(nn.Module):
    """Restormer: a 4-level U-Net of transposed-attention transformer blocks with a global residual.

    Constructor arguments up to ``dual_pixel_task`` are the official ones with the official defaults
    (Restormer Base, 26,126,644 parameters). Output is ``head(features) + input[:, :out_channels]``, or
    without the residual when ``dual_pixel_task`` (6-channel dual-pixel input, as official).

    Keyword-only extras, both changeable after construction (e.g. after loading a checkpoint):
    ``attention`` -- ``'fused'`` or ``'matmul'`` (same result, see :class:`Attention`);
    ``grad_checkpoint`` -- recompute transformer blocks in backward while training to save memory.

    Input (N, inp_channels, H, W) of any H, W; output (N, out_channels, H, W).
    """

    def __init__(
        self,
        inp_channels: int = 3,
        out_channels: int = 3,
        dim: int = 48,
        num_blocks: Sequence[int] = (4, 6, 6, 8),
        num_refinement_blocks: int = 4,
        heads: Sequence[int] = (1, 2, 4, 8),
        ffn_expansion_factor: float = 2.66,
        bias: bool = False,
        LayerNorm_type: str = "WithBias",
        dual_pixel_task: bool = False,
        *,
        attention: str = "fused",
        grad_checkpoint: bool = False,
    ):
        super().__init__()
        if len(num_blocks) != 4 or len(heads) != 4:
            raise ValueError(
                f"num_blocks and heads need one entry per level (4), got num_blocks={list(num_blocks)}, "
                f"heads={list(heads)}"
            )
        if LayerNorm_type not in LAYER_NORM_TYPES:
            raise ValueError(f"LayerNorm_type must be one of {LAYER_NORM_TYPES}, got {LayerNorm_type!r}")
        widths = [dim, dim * 2, dim * 4, dim * 8]
        for level, (width, num_heads) in enumerate(zip(widths, heads), start=1):
            if width % num_heads:
                raise ValueError(f"level {level} width {width} (dim={dim}) is not divisible by heads={num_heads}")
        if not dual_pixel_task and inp_channels < out_channels:
            raise ValueError(
                f"inp_channels ({inp_channels}) must be >= out_channels ({out_channels}): the residual adds "
                "the first out_channels input channels"
            )
        _check_attention_kind(attention)
        self.inp_channels = inp_channels
        self.out_channels = out_channels
        self.grad_checkpoint = grad_checkpoint

        def stage(width: int, num_heads: int, depth: int) -> nn.Sequential:
            return nn.Sequential(
                *(
                    TransformerBlock(width, num_heads, ffn_expansion_factor, bias, LayerNorm_type, attention)
                    for _ in range(depth)
                )
            )

        self.patch_embed = OverlapPatchEmbed(inp_channels, dim)
        self.encoder_level1 = stage(widths[0], heads[0], num_blocks[0])
        self.down1_2 = Downsample(widths[0])
        self.encoder_level2 = stage(widths[1], heads[1], num_blocks[1])
        self.down2_3 = Downsample(widths[1])
        self.encoder_level3 = stage(widths[2], heads[2], num_blocks[2])
        self.down3_4 = Downsample(widths[2])
        self.latent = stage(widths[3], heads[3], num_blocks[3])

        self.up4_3 = Upsample(widths[3])
        self.reduce_chan_level3 = nn.Conv2d(widths[3], widths[2], kernel_size=1, bias=bias)
        self.decoder_level3 = stage(widths[2], heads[2], num_blocks[2])
        self.up3_2 = Upsample(widths[2])
        self.reduce_chan_level2 = nn.Conv2d(widths[2], widths[1], kernel_size=1, bias=bias)
        self.decoder_level2 = stage(widths[1], heads[1], num_blocks[1])
        # Level 1 keeps the concatenated 2*dim width (no channel reduction), as in the paper.
        self.up2_1 = Upsample(widths[1])
        self.decoder_level1 = stage(widths[1], heads[0], num_blocks[0])
        self.refinement = stage(widths[1], heads[0], num_refinement_blocks)

        self.dual_pixel_task = dual_pixel_task
        if dual_pixel_task:
            self.skip_conv = nn.Conv2d(dim, widths[1], kernel_size=1, bias=bias)
        self.output = nn.Conv2d(widths[1], out_channels, kernel_size=3, padding=1, bias=bias)

    @classmethod
    def base(cls, **overrides) -> "Restormer":
        """Restormer Base (the official defaults, 26.1 M parameters); keyword arguments override them."""
        return cls(**overrides)

    @classmethod
    def tiny(cls, **overrides) -> "Restormer":
        """A 0.2 M-parameter Restormer for tests and smoke runs; keyword arguments override it."""
        config = dict(dim=8, num_blocks=(1, 1, 1, 1), num_refinement_blocks=1, heads=(1, 1, 1, 1))
        config.update(overrides)
        return cls(**config)

    @property
    def attention(self) -> str:
        """Attention kernel of every block (one of ``ATTENTION_KINDS``); assign to switch all blocks."""
        return next(module.attention for module in self.modules() if isinstance(module, Attention))

    @attention.setter
    def attention(self, kind: str) -> None:
        _check_attention_kind(kind)
        for module in self.modules():
            if isinstance(module, Attention):
                module.attention = kind

    def _run_stage(self, blocks: nn.Sequential, x: torch.Tensor) -> torch.Tensor:
        if self.grad_checkpoint and self.training and torch.is_grad_enabled():
            for block in blocks:
                x = checkpoint(block, x, use_reentrant=False)
            return x
        return blocks(x)

    def forward(self, inp_img: torch.Tensor) -> torch.Tensor:
        if inp_img.dim() != 4 or inp_img.shape[1] != self.inp_channels:
            raise ValueError(
                f"Restormer expects input of shape (N, {self.inp_channels}, H, W), got {tuple(inp_img.shape)}"
            )
        padded, (height, width) = pad_to_multiple(inp_img, SIZE_MULTIPLE)
        # channels_last from the 3-channel input on: every activation is then the (N, H, W, C) tensor the
        # blocks compute on, and the 3x3 convolutions, pixel (un)shuffles and concatenations keep it.
        padded = padded.contiguous(memory_format=torch.channels_last)

        inp_enc_level1 = self.patch_embed(padded)
        out_enc_level1 = self._run_stage(self.encoder_level1, inp_enc_level1)
        out_enc_level2 = self._run_stage(self.encoder_level2, self.down1_2(out_enc_level1))
        out_enc_level3 = self._run_stage(self.encoder_level3, self.down2_3(out_enc_level2))
        latent = self._run_stage(self.latent, self.down3_4(out_enc_level3))

        inp_dec_level3 = self.reduce_chan_level3(torch.cat([self.up4_3(latent), out_enc_level3], 1))
        out_dec_level3 = self._run_stage(self.decoder_level3, inp_dec_level3)
        inp_dec_level2 = self.reduce_chan_level2(torch.cat([self.up3_2(out_dec_level3), out_enc_level2], 1))
        out_dec_level2 = self._run_stage(self.decoder_level2, inp_dec_level2)
        inp_dec_level1 = torch.cat([self.up2_1(out_dec_level2), out_enc_level1], 1)
        out_dec_level1 = self._run_stage(self.decoder_level1, inp_dec_level1)
        out_dec_level1 = self._run_stage(self.refinement, out_dec_level1)

        if self.dual_pixel_task:
            return self.output(out_dec_level1 + self.skip_conv(inp_enc_level1))[..., :height, :width]
        return self.output(out_dec_level1)[..., :height, :width] + inp_img[:, : self.out_channels]
