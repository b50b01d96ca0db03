"""RetinexMamba: Retinexformer's illumination-guided U-Net with state-space (Mamba) blocks
(Bai et al., 2024, arXiv:2405.03349).

Written from the official implementation's parameter layout (github.com/YhuoyuH/RetinexMamba,
``basicsr/models/archs/RetinexMamba_arch.py``, and ``Options/RetinexMamba_LOL_v1.yml``): constructor
arguments, defaults, module and parameter names and shapes match it, so its published files load
with ``strict=True``. The catalog configuration ``RetinexMamba(n_feat=40, stage=1,
num_blocks=[1, 2, 2])`` (``d_state`` 16) has 4,589,001 parameters.

A stage is Retinexformer's (:class:`models.retinexformer.RetinexStage`: illumination estimator,
light-up ``I * (1 + M)``, restorer with the global residual); the restorer's guided block
(``IFSSM``) is, per block on features ``x`` and illumination features ``L``:

1. ``IFA``: ``r = LN1(x)``, ``s = LN1(conv1x1(L))`` (the same norm for both, as official);
   ``r = r + CrossAttention(r, s)`` -- channel attention with keys/values from ``r`` and queries
   from ``s`` --, then ``r = r + GDFN(LN2(r))`` (Restormer's gated feed-forward, expansion 2.66);
2. ``x = SS2D(r) + x`` (:class:`models.ss2d.SS2D`: four-direction selective scan, ``d_state``);
3. ``x = FFN(LN(x)) + x`` (Retinexformer's feed-forward).

``d_state`` follows the official construction loop: encoder level i uses ``d_state * 2**i``, the
bottleneck ``d_state * 2**2``, and the decoder level that follows the bottleneck keeps the
bottleneck's value before halving -- decoder blocks at 1/2 and full resolution use
``4 * d_state`` and ``2 * d_state`` (64 and 32 for the catalog's 16).

Two key namings exist for the same tensors: ``body.N.Restorer.*`` (the current file) and
``body.N.denoiser.*`` (an older version of it); :attr:`RetinexMamba.checkpoint_key_renames` lets
:func:`utils.checkpoint.load_pretrained` map the older one (and say so). The state-space blocks hold
no buffers. The additions of :mod:`models.retinexformer` apply (any size via padding to a multiple
of 4, extra input channels, ``return_illumination``, ``grad_checkpoint``).
"""
from collections.abc import Sequence

import torch
from torch import nn

from .restormer import FeedForward as GatedFeedForward
from .restormer import LayerNorm
from .retinexformer import (LEVELS, FeedForward, IlluminationEstimator, PreNorm, RetinexModel, RetinexStage,
                            RetinexUNet, init_linear_and_norm, run_blocks)
from .ss2d import SS2D


class CrossAttention(nn.Module):
    """The official IFA ``Attention``: per head, channel attention of queries from ``y`` over
    keys/values from ``x``, ``softmax(temperature * q k^T) v`` with q, k L2-normalised over the pixels
    (a C_head x C_head map). ``q_dwconv`` is a full 3x3 convolution, as official."""

    def __init__(self, dim: int, num_heads: int, bias: bool):
        super().__init__()
        self.num_heads = num_heads
        self.temperature = nn.Parameter(torch.ones(num_heads, 1, 1))
        self.kv = nn.Conv2d(dim, dim * 2, kernel_size=1, bias=bias)
        self.kv_dwconv = nn.Conv2d(dim * 2, dim * 2, kernel_size=3, stride=1, padding=1, groups=dim * 2, bias=bias)
        self.q = nn.Conv2d(dim, dim, kernel_size=1, bias=bias)
        self.q_dwconv = nn.Conv2d(dim, dim, kernel_size=3, stride=1, padding=1, bias=bias)
        self.project_out = nn.Conv2d(dim, dim, kernel_size=1, bias=bias)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        batch, channels, height, width = x.shape
        head_shape = (batch, self.num_heads, channels // self.num_heads, height * width)
        key, value = self.kv_dwconv(self.kv(x)).chunk(2, dim=1)
        query = torch.nn.functional.normalize(self.q_dwconv(self.q(y)).reshape(head_shape), dim=-1)
        key = torch.nn.functional.normalize(key.reshape(head_shape), dim=-1)
        attention = ((query @ key.transpose(-2, -1)) * self.temperature).softmax(dim=-1)
        out = attention @ value.reshape(head_shape)
        return self.project_out(out.reshape(batch, channels, height, width))


class IFA(nn.Module):
    """Illumination fusion attention (see the module docstring, step 1). (N, C, H, W) in and out."""

    def __init__(self, dim_2: int, dim: int, num_heads: int = 2, ffn_expansion_factor: float = 2.66,
                 bias: bool = False, LayerNorm_type: str = "WithBias"):
        super().__init__()
        self.conv1 = nn.Conv2d(dim_2, dim, (1, 1))
        self.norm1 = LayerNorm(dim, LayerNorm_type)
        self.attn = CrossAttention(dim, num_heads, bias)
        self.norm2 = LayerNorm(dim, LayerNorm_type)
        self.ffn = GatedFeedForward(dim, ffn_expansion_factor, bias)

    def forward(self, features: torch.Tensor, illumination: torch.Tensor) -> torch.Tensor:
        # The official code first resizes the illumination features to the features' size: they
        # always have it here (both are downsampled by the same stride-2 convolutions).
        guide = self.norm1(self.conv1(illumination))
        features = self.norm1(features)
        features = features + self.attn(features, guide)
        return features + self.ffn(self.norm2(features))


class IFSSM(nn.Module):
    """Illumination-fused state-space blocks: ``blocks[i] = ModuleList([IFA, SS2D, PreNorm(FFN)])``
    (module docstring, steps 1-3). ``dim_head`` is accepted and unused, as official."""

    def __init__(self, dim: int, dim_head: int = 64, heads: int = 8, num_blocks: int = 2, d_state: int = 16):
        super().__init__()
        self.blocks = nn.ModuleList(
            nn.ModuleList([
                IFA(dim_2=dim, dim=dim, num_heads=heads, ffn_expansion_factor=2.66, bias=True, LayerNorm_type="WithBias"),
                SS2D(d_model=dim, dropout=0, d_state=d_state),
                PreNorm(dim, FeedForward(dim=dim))])
            for _ in range(num_blocks))
        self.grad_checkpoint = False

    @staticmethod
    def _block(block: nn.ModuleList, x: torch.Tensor, illumination: torch.Tensor) -> torch.Tensor:
        fusion, scan, feed_forward = block
        x = scan(fusion(x, illumination).permute(0, 2, 3, 1)) + x.permute(0, 2, 3, 1)
        return (feed_forward(x) + x).permute(0, 3, 1, 2)

    def forward(self, x: torch.Tensor, illumination: torch.Tensor) -> torch.Tensor:
        return run_blocks(self.blocks, self._block, x, illumination,
                          use_checkpoint=self.grad_checkpoint and self.training)


def _d_state_at(d_state: int, level: int, place) -> int:
    """The official construction loop's d_state at a U-Net place (see the module docstring)."""
    part, index = place
    exponent = {"encoder": index, "bottleneck": level, "decoder": level - index}[part]
    return d_state * 2 ** exponent


class Restorer(RetinexUNet):
    """RetinexMamba's restorer: :class:`models.retinexformer.RetinexUNet` of :class:`IFSSM` blocks
    (heads = width / dim; d_state per place as in the module docstring)."""

    def __init__(self, in_dim: int = 3, out_dim: int = 3, dim: int = 31, level: int = 2,
                 num_blocks: Sequence[int] = (2, 4, 4), d_state: int = 16):
        super().__init__(in_dim, out_dim, dim, level, num_blocks, lambda width, depth, heads, place: IFSSM(
            dim=width, num_blocks=depth, dim_head=dim, heads=heads, d_state=_d_state_at(d_state, level, place)))
        self.apply(init_linear_and_norm)


class RetinexMamba(RetinexModel):
    """RetinexMamba: ``stage`` x (illumination estimator + IFSSM U-Net restorer).

    Constructor arguments are the official ones with the official defaults (``n_feat=31, stage=3,
    num_blocks=[1, 1, 1], d_state=16``; as in Retinexformer, n_feat=31 cannot be built -- it must be
    divisible by 4); the published LOL files use ``n_feat=40, stage=1, num_blocks=[1, 2, 2]``
    (:meth:`catalog`). ``grad_checkpoint`` (keyword-only) recomputes blocks in backward.
    """

    # Older official files keep the restorer under 'denoiser' (utils.checkpoint.rename_legacy_keys).
    checkpoint_key_renames = ((r"^body\.(\d+)\.denoiser\.", r"body.\1.Restorer."),)

    def __init__(self, in_channels: int = 3, out_channels: int = 3, n_feat: int = 31, stage: int = 3,
                 num_blocks: Sequence[int] = (1, 1, 1), d_state: int = 16, *, grad_checkpoint: bool = False):
        stages = [RetinexStage(IlluminationEstimator(n_feat),
                               Restorer(in_dim=in_channels, out_dim=out_channels, dim=n_feat, level=LEVELS,
                                        num_blocks=num_blocks, d_state=d_state), "Restorer")
                  for _ in range(stage)]
        super().__init__(in_channels, out_channels, stages, grad_checkpoint)

    @classmethod
    def catalog(cls, **overrides) -> "RetinexMamba":
        """The configuration of Options/RetinexMamba_LOL_v1.yml (4,589,001 parameters)."""
        return cls(**{"n_feat": 40, "stage": 1, "num_blocks": [1, 2, 2], **overrides})
