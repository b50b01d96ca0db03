"""The selective scan of Mamba (S6), on every device.

``selective_scan`` has the semantics of ``mamba_ssm.ops.selective_scan_interface.selective_scan_fn``
and of its documented step-by-step reference ``selective_scan_ref`` (github.com/state-spaces/mamba,
``mamba_ssm/ops/selective_scan_interface.py``). For every batch ``b``, channel ``d``, state ``n``
and step ``t`` (``delta`` first gets ``delta_bias`` added and, with ``delta_softplus``, a softplus)::

    h[t] = exp(delta[t] * A[d, n]) * h[t-1] + delta[t] * B[t, n] * u[t]        (h[-1] = 0)
    y[t] = sum_n C[t, n] * h[t, n]  +  D[d] * u[t]
    out  = y * silu(z)                                                       (when z is given)

Shapes: ``u``, ``delta``, ``z`` (batch, dim, L); ``A`` (dim, N), real; ``B`` and ``C`` (dim, N) (one
per channel, constant in time), (batch, N, L), or (batch, groups, N, L) where channel ``d`` reads
group ``d // (dim // groups)``; ``D`` and ``delta_bias`` (dim,). Everything is computed in float32
(autocast is switched off inside); the output has ``u``'s dtype, the optional last state
(batch, dim, N) is float32.

On CUDA with ``mamba_ssm`` importable, its fused kernel runs. Otherwise ``selective_scan_torch``: a
pure-PyTorch scan that is parallel over the sequence and bounded in memory:

* the sequence is cut into segments of at most ``segment_elements`` state values (batch x dim x N x
  length); the state is carried from one segment to the next. While training, each segment of a
  scan larger than ``RECOMPUTE_ELEMENTS`` is recomputed in the backward pass (activation
  checkpointing), so what stays saved is linear in L and small: the inputs and one (batch, dim, N)
  state per segment;
* inside a segment, all chunks of ``chunk_size`` steps are scanned at once from a zero state (one
  vectorised step per position of a chunk, so ``chunk_size`` Python steps whatever L is), the chunks'
  end states are combined by a Hillis-Steele (associative) scan over the chunks (log2 of their count
  vectorised passes), and each step adds its chunk's incoming state times exp(A * cumulative delta)
  -- a decay, never a growth, so nothing overflows however strong the decay.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

# Steps of a chunk: Python steps per segment (the chunks of a segment run side by side).
CHUNK_SIZE = 32
# Largest segment, in state values (batch * dim * N * steps), per device type: on a GPU 2**25 float32
# (128 MiB per tensor, few kernel launches); on a CPU 2**22 (16 MiB), which stays closer to the caches.
SEGMENT_ELEMENTS = {"cuda": 2 ** 25, "cpu": 2 ** 22}
# Scans with more state values than this recompute their segments in the backward pass (below it, the
# saved graph is a few MiB).
RECOMPUTE_ELEMENTS = 2 ** 20


@functools.lru_cache(maxsize=1)
def mamba_ssm_scan():
    """mamba_ssm's fused CUDA scan, or None where the package is not installed (or does not load)."""
    try:
        from mamba_ssm.ops.selective_scan_interface import selective_scan_fn
    except ImportError:
        return None
    return selective_scan_fn


def selective_scan(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
                   return_last_state=False):
    """Selective scan with mamba_ssm's ``selective_scan_fn`` semantics (see the module docstring):
    mamba_ssm's kernel for CUDA tensors when installed, else :func:`selective_scan_torch`."""
    if u.is_cuda:
        fused = mamba_ssm_scan()
        if fused is not None:
            return fused(u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state)
    return selective_scan_torch(u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state)


def selective_scan_naive(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
                         return_last_state=False):
    """The recurrence one Python step per position, as mamba_ssm's ``selective_scan_ref`` spells it
    out: the reference the parallel scan is tested and benchmarked against (slow; memory grows with
    every step it keeps for the backward pass)."""
    dtype_in = u.dtype
    with torch.autocast(u.device.type, enabled=False):
        u, delta = u.float(), delta.float()
        if delta_bias is not None:
            delta = delta + delta_bias.float()[:, None]
        if delta_softplus:
            delta = F.softplus(delta)
        batch, dim, length = u.shape

        def per_channel(matrix):  # -> (batch, dim, N, L)
            matrix = matrix.float()
            if matrix.dim() == 2:
                return matrix[None, :, :, None].expand(batch, dim, -1, length)
            if matrix.dim() == 3:
                return matrix[:, None].expand(batch, dim, -1, length)
            return matrix.repeat_interleave(dim // matrix.shape[1], dim=1)

        B, C, A = per_channel(B), per_channel(C), A.float()
        state = u.new_zeros(batch, dim, A.shape[1])
        ys = []
        for t in range(length):
            state = torch.exp(delta[:, :, t, None] * A) * state + delta[:, :, t, None] * B[..., t] * u[:, :, t, None]
            ys.append((state * C[..., t]).sum(-1))
        out = torch.stack(ys, dim=-1)
        if D is not None:
            out = out + u * D.float()[:, None]
        if z is not None:
            out = out * F.silu(z.float())
    out = out.to(dtype_in)
    return (out, state) if return_last_state else out


def _shift_combine(decay, value, step, dim):
    """One Hillis-Steele pass: position t (>= step) absorbs position t - step."""
    length = decay.shape[dim]
    head_decay, tail_decay = decay.narrow(dim, 0, step), decay.narrow(dim, step, length - step)
    head_value, tail_value = value.narrow(dim, 0, step), value.narrow(dim, step, length - step)
    earlier_decay = decay.narrow(dim, 0, length - step)
    earlier_value = value.narrow(dim, 0, length - step)
    value = torch.cat([head_value, tail_value + tail_decay * earlier_value], dim)
    decay = torch.cat([head_decay, tail_decay * earlier_decay], dim)
    return decay, value


def _associative_scan(decay, value, dim):
    """Inclusive scan h[t] = decay[t] * h[t-1] + value[t] (h[-1] = 0) along ``dim``, in log2(length)
    vectorised Hillis-Steele passes."""
    step = 1
    while step < decay.shape[dim]:
        decay, value = _shift_combine(decay, value, step, dim)
        step *= 2
    return value


def _scan_segment(state, u, delta, A, B, C, chunk_size: int):
    """Scan one segment from ``state``; returns (y without the D term, state after the segment).

    Layout (batch, groups, channels per group, steps, N): ``u`` and ``delta`` have N = 1, ``A`` is
    (1, G, H, 1, N), ``B``/``C`` broadcast to it (steps = 1 when constant in time), ``state`` has
    steps = 1."""
    length = u.shape[3]
    chunk_size = min(chunk_size, length)
    pad = (-length) % chunk_size
    if pad:  # padded steps have delta = 0: decay 1, input 0, so the state passes through unchanged
        u, delta = F.pad(u, (0, 0, 0, pad)), F.pad(delta, (0, 0, 0, pad))
        if B.shape[3] > 1:
            B = F.pad(B, (0, 0, 0, pad))
    chunks = (length + pad) // chunk_size
    decay = torch.exp(delta * A).unflatten(3, (chunks, chunk_size))
    drive = (delta * u * B).unflatten(3, (chunks, chunk_size))
    # Every chunk from a zero state at once: one vectorised step per position of a chunk.
    # (unbind, not indexing: its backward is one stack, where each index would scatter a full tensor)
    drives, decays = drive.unbind(4), decay.unbind(4)
    local = [drives[0]]
    for step in range(1, chunk_size):
        local.append(torch.addcmul(drives[step], decays[step], local[-1]))
    local = torch.stack(local, dim=4)
    # Decay from a chunk's start to each of its steps: exp(A * cumulative delta), never above the
    # true product, so nothing overflows however strong the decay.
    cumulative_decay = torch.exp(delta.unflatten(3, (chunks, chunk_size)).cumsum(4) * A.unsqueeze(3))
    chunk_decay, chunk_end = cumulative_decay[:, :, :, :, -1], local[:, :, :, :, -1]
    # The incoming state enters through the first chunk; then chunk ends are scanned like steps.
    chunk_end = torch.cat([chunk_end[:, :, :, :1] + chunk_decay[:, :, :, :1] * state,
                           chunk_end[:, :, :, 1:]], dim=3)
    chunk_state = _associative_scan(chunk_decay, chunk_end, dim=3)
    incoming = torch.cat([state, chunk_state[:, :, :, :-1]], dim=3)
    states = torch.addcmul(local, cumulative_decay, incoming.unsqueeze(4)).flatten(3, 4)[:, :, :, :length]
    y = (states * C).sum(-1)
    return y, chunk_state[:, :, :, -1:]


def _grouped(matrix, name, batch, groups, per_group, length):
    """B or C as a 5-D tensor broadcastable to (batch, groups, per_group, length, N)."""
    if matrix.dim() == 2:  # (dim, N): constant in time
        return matrix.float().reshape(1, groups, per_group, 1, -1)
    if matrix.dim() == 3:  # (batch, N, L): one for all channels
        return matrix.float().transpose(1, 2).reshape(batch, 1, 1, length, -1)
    if matrix.dim() == 4:
        return matrix.float().transpose(2, 3).unsqueeze(2)
    raise ValueError(f"{name} must have 2, 3 or 4 dimensions, got shape {tuple(matrix.shape)}")


def selective_scan_torch(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
                         return_last_state=False, chunk_size=CHUNK_SIZE, segment_elements=None):
    """The pure-PyTorch selective scan (any device); arguments and result as :func:`selective_scan`.

    ``segment_elements`` bounds the state values scanned at once (default: ``SEGMENT_ELEMENTS`` of the
    device type, the CPU's for devices not listed); ``chunk_size`` is the steps of a chunk."""
    if A.is_complex():
        raise ValueError("selective_scan_torch supports real A only")
    dtype_in = u.dtype
    batch, dim, length = u.shape
    group_counts = {m.shape[1] for m in (B, C) if m.dim() == 4}
    if len(group_counts) > 1:
        raise ValueError(f"B and C must have the same number of groups, got {sorted(group_counts)}")
    groups = group_counts.pop() if group_counts else 1
    if dim % groups:
        raise ValueError(f"dim {dim} is not divisible by the {groups} groups of B/C")
    per_group = dim // groups
    with torch.autocast(u.device.type, enabled=False):
        u = u.float()
        delta = delta.float()
        if delta_bias is not None:
            delta = delta + delta_bias.float()[:, None]
        if delta_softplus:
            delta = F.softplus(delta)
        as_5d = (batch, groups, per_group, length, 1)
        u5, delta5 = u.reshape(as_5d), delta.reshape(as_5d)
        A5 = A.float().reshape(1, groups, per_group, 1, -1)
        B5 = _grouped(B, "B", batch, groups, per_group, length)
        C5 = _grouped(C, "C", batch, groups, per_group, length)
        state = u.new_zeros(batch, groups, per_group, 1, A.shape[1])
        if segment_elements is None:
            segment_elements = SEGMENT_ELEMENTS.get(u.device.type, SEGMENT_ELEMENTS["cpu"])
        segment = max(chunk_size, segment_elements // max(1, batch * dim * A.shape[1]) // chunk_size * chunk_size)
        # Small scans keep their graph: recomputing would cost more time than their memory is worth.
        recompute = batch * dim * A.shape[1] * length > RECOMPUTE_ELEMENTS and torch.is_grad_enabled() and any(
            t.requires_grad for t in (u, delta, A, B, C))
        ys = []
        for start in range(0, length, segment):
            stop = min(start + segment, length)
            pieces = (u5[:, :, :, start:stop], delta5[:, :, :, start:stop],
                      B5 if B5.shape[3] == 1 else B5[:, :, :, start:stop],
                      C5 if C5.shape[3] == 1 else C5[:, :, :, start:stop])
            args = (state, pieces[0], pieces[1], A5, pieces[2], pieces[3], chunk_size)
            if recompute:
                y, state = checkpoint(_scan_segment, *args, use_reentrant=False)
            else:
                y, state = _scan_segment(*args)
            ys.append(y)
        out = torch.cat(ys, dim=3).reshape(batch, dim, length)
        if D is not None:
            out = out + u * D.float()[:, None]
        if z is not None:
            out = out * F.silu(z.float())
    out = out.to(dtype_in)
    if return_last_state:
        return out, state.reshape(batch, dim, -1)
    return out
