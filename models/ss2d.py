"""SS2D, the 2-D selective-scan block of VMamba as MambaIR and RetinexMamba use it.

Facts from the official code, which both repositories share word for word apart from the default of
``expand`` (2 in RetinexMamba, 2.0 in MambaIR; both give ``d_inner = int(expand * d_model)``):
csguoh/MambaIR ``basicsr/archs/mambair_arch.py`` (class SS2D) and YhuoyuH/RetinexMamba
``basicsr/models/archs/RetinexMamba_arch.py`` (class SS2D). Parameter names and shapes are theirs,
so their checkpoints load with ``strict=True``; there are no buffers.

Forward, on channels-last (B, H, W, d_model) features: ``in_proj`` splits into a branch ``x`` and a
gate ``z``; ``x`` goes through the depthwise ``conv2d`` and SiLU, then is read as four sequences —
row-major, column-major, and both reversed — each scanned with its own projections (``x_proj_weight``
gives per-step dt/B/C, ``dt_projs_*`` lift dt to every channel, ``A_logs``/``Ds`` per direction, all
four stacked along the channel axis of one scan call). The four outputs, put back in row-major order,
are summed, layer-normed (``out_norm``), gated by SiLU(z) and projected back (``out_proj``).
The scan is :func:`models.scan.selective_scan` (mamba_ssm's kernel on CUDA when installed).
"""

import math

import torch
import torch.nn.functional as F
from torch import nn

from .scan import selective_scan

DIRECTIONS = 4  # row-major, column-major, and both reversed


class SS2D(nn.Module):
    def __init__(self, d_model, d_state=16, d_conv=3, expand=2.0, dt_rank="auto", dt_min=0.001,
                 dt_max=0.1, dt_init="random", dt_scale=1.0, dt_init_floor=1e-4, dropout=0.0,
                 conv_bias=True, bias=False, device=None, dtype=None, **kwargs):
        super().__init__()
        if dt_init not in ("random", "constant"):
            raise ValueError(f"dt_init must be 'random' or 'constant', got {dt_init!r}")
        factory = {"device": device, "dtype": dtype}
        self.d_model = d_model
        self.d_state = d_state
        self.d_conv = d_conv
        self.expand = expand
        self.d_inner = int(expand * d_model)
        self.dt_rank = math.ceil(d_model / 16) if dt_rank == "auto" else dt_rank
        inner, rank = self.d_inner, self.dt_rank

        self.in_proj = nn.Linear(d_model, inner * 2, bias=bias, **factory)
        self.conv2d = nn.Conv2d(inner, inner, kernel_size=d_conv, padding=(d_conv - 1) // 2,
                                groups=inner, bias=conv_bias, **factory)
        self.act = nn.SiLU()
        # Per direction: inner -> (dt, B, C); nn.Linear's default init bound 1/sqrt(fan_in).
        bound = inner ** -0.5
        self.x_proj_weight = nn.Parameter(
            torch.empty(DIRECTIONS, rank + 2 * d_state, inner, **factory).uniform_(-bound, bound))
        # dt projection: weights keep the variance (uniform or constant rank**-0.5 * dt_scale); the
        # bias is softplus^-1 of a log-uniform dt in [dt_min, dt_max] (floored at dt_init_floor).
        std = rank ** -0.5 * dt_scale
        weight = torch.empty(DIRECTIONS, inner, rank, **factory)
        if dt_init == "constant":
            nn.init.constant_(weight, std)
        else:
            nn.init.uniform_(weight, -std, std)
        self.dt_projs_weight = nn.Parameter(weight)
        log_dt = torch.rand(DIRECTIONS, inner, **factory) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min)
        dt = torch.exp(log_dt).clamp(min=dt_init_floor)
        self.dt_projs_bias = nn.Parameter(dt + torch.log(-torch.expm1(-dt)))
        # S4D-real: A[n] = -(n + 1), stored as log; D = 1. Both float32 and excluded from weight decay.
        a_log = torch.log(torch.arange(1, d_state + 1, dtype=torch.float32, device=device))
        self.A_logs = nn.Parameter(a_log.repeat(DIRECTIONS * inner, 1))
        self.Ds = nn.Parameter(torch.ones(DIRECTIONS * inner, device=device))
        self.A_logs._no_weight_decay = True
        self.Ds._no_weight_decay = True

        self.out_norm = nn.LayerNorm(inner)
        self.out_proj = nn.Linear(inner, d_model, bias=bias, **factory)
        self.dropout = nn.Dropout(dropout) if dropout > 0.0 else None

    def forward_core(self, x: torch.Tensor) -> torch.Tensor:
        """(B, d_inner, H, W) -> the four directions' scans summed in row-major order, (B, d_inner, L), float32."""
        batch, channels, height, width = x.shape
        length = height * width
        rows = x.flatten(2)
        columns = x.transpose(2, 3).flatten(2)
        forward_pair = torch.stack([rows, columns], dim=1)
        sequences = torch.cat([forward_pair, forward_pair.flip(-1)], dim=1)  # (B, 4, d, L)

        projected = torch.einsum("bkdl,kcd->bkcl", sequences, self.x_proj_weight)
        dts, Bs, Cs = projected.split([self.dt_rank, self.d_state, self.d_state], dim=2)
        dts = torch.einsum("bkrl,kdr->bkdl", dts, self.dt_projs_weight)
        y = selective_scan(
            sequences.float().reshape(batch, -1, length),
            dts.float().reshape(batch, -1, length),
            -torch.exp(self.A_logs.float()),
            Bs.float(), Cs.float(), self.Ds.float(),
            delta_bias=self.dt_projs_bias.float().reshape(-1),
            delta_softplus=True,
        ).reshape(batch, DIRECTIONS, channels, length)

        reversed_back = y[:, 2:4].flip(-1)
        column_major = torch.stack([y[:, 1], reversed_back[:, 1]], dim=1)
        column_major = column_major.reshape(batch, 2, channels, width, height).transpose(3, 4).flatten(3)
        return y[:, 0] + reversed_back[:, 0] + column_major[:, 0] + column_major[:, 1]

    def forward(self, x: torch.Tensor, **kwargs) -> torch.Tensor:
        batch, height, width, _ = x.shape
        branch, gate = self.in_proj(x).chunk(2, dim=-1)
        branch = self.act(self.conv2d(branch.permute(0, 3, 1, 2).contiguous()))
        y = self.forward_core(branch).transpose(1, 2).reshape(batch, height, width, -1)
        out = self.out_proj(self.out_norm(y) * F.silu(gate))
        if self.dropout is not None:
            out = self.dropout(out)
        return out
