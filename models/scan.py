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
  checkpointing, ``_RecomputedSegment``), so what stays saved is linear in L and small: the inputs
  and one (batch, dim, N) state per segment;
* inside a segment, all chunks of ``chunk_size`` steps are scanned at once from a zero state (one
  vectorised in-place step per position of a chunk, so ``chunk_size`` Python steps whatever L is),
  the chunks' end states are combined by a Hillis-Steele (associative) scan over the chunks (log2 of
  their count vectorised passes), and each step adds its chunk's incoming state times the running
  product of the chunk's decays -- factors <= 1, so nothing overflows however strong the decay;
* the backward pass of the recurrence is written by hand (``_LinearRecurrence``): the adjoint is the
  same linear recurrence run backwards, so it is one more scan instead of autograd replaying the
  forward's many small ops.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F

# Steps of a chunk: Python steps per segment (the chunks of a segment run side by side).
CHUNK_SIZE = 32
# Largest segment, in state values (batch * dim * N * steps), per device type: on a GPU 2**25 float32
# (128 MiB per tensor, few kernel launches); on a CPU 2**22 (16 MiB), which stays closer to the caches.
SEGMENT_ELEMENTS = {"cuda": 2 ** 25, "cpu": 2 ** 22}
# Scans with more state values than this recompute their segments in the backward pass (below it, the
# saved tensors are some 16 MiB each: a 32x32 crop of a small model trains without recomputation).
RECOMPUTE_ELEMENTS = 2 ** 22


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


def _linear_scan(decay, drive, state, chunk_size: int):
    """All states of h[t] = decay[t] * h[t-1] + drive[t] (h[-1] = ``state``) along dim 3, and the last.

    Layout (batch, groups, channels per group, steps, N), ``state`` with steps = 1; no autograd
    (:class:`_LinearRecurrence` gives the backward)."""
    length = decay.shape[3]
    chunk_size = min(chunk_size, length)
    pad = (-length) % chunk_size
    if pad:  # padded steps decay by 1 and add 0, so the state passes through unchanged
        decay, drive = F.pad(decay, (0, 0, 0, pad), value=1.0), F.pad(drive, (0, 0, 0, pad))
    chunks = (length + pad) // chunk_size
    decay, drive = decay.unflatten(3, (chunks, chunk_size)), drive.unflatten(3, (chunks, chunk_size))
    # Every chunk from a zero state at once: one vectorised step per position of a chunk, written in
    # place (no per-step tensors, no final stack).
    states = drive.clone()
    for step in range(1, chunk_size):
        states[:, :, :, :, step].addcmul_(decay[:, :, :, :, step], states[:, :, :, :, step - 1])
    # Decay from a chunk's start to each of its steps: a running product of factors <= 1, so it never
    # overflows however strong the decay.
    cumulative_decay = decay.cumprod(4)
    chunk_decay, chunk_end = cumulative_decay[:, :, :, :, -1], states[:, :, :, :, -1].clone()
    # The incoming state enters through the first chunk; then chunk ends are scanned like steps.
    chunk_end[:, :, :, :1].addcmul_(chunk_decay[:, :, :, :1], state)
    chunk_state = _associative_scan(chunk_decay, chunk_end, dim=3)
    incoming = torch.cat([state, chunk_state[:, :, :, :-1]], dim=3)
    states.addcmul_(cumulative_decay, incoming.unsqueeze(4))
    states = states.flatten(3, 4)
    if pad:
        states = states[:, :, :, :length]
    return states, chunk_state[:, :, :, -1:]


class _LinearRecurrence(torch.autograd.Function):
    """h[t] = decay[t] * h[t-1] + drive[t] (see :func:`_linear_scan`) with a hand-written backward.

    The adjoint of a linear recurrence is the same recurrence run backwards:
    g[t] = dL/dh[t] + decay[t+1] * g[t+1] (g after the last step = dL/d last state), and then
    dL/d drive[t] = g[t], dL/d decay[t] = g[t] * h[t-1], dL/d h[-1] = decay[0] * g[0]. So the backward
    is one more scan and three products, where autograd through the scan's many small ops would
    replay each of them."""

    @staticmethod
    def forward(ctx, decay, drive, state, chunk_size):
        states, last = _linear_scan(decay, drive, state, chunk_size)
        ctx.chunk_size = chunk_size
        ctx.save_for_backward(decay, states, state)
        return states, last

    @staticmethod
    def backward(ctx, grad_states, grad_last):
        # an output without a gradient arrives as zeros (autograd.Function materialises grads by default)
        decay, states, state = ctx.saved_tensors
        # Reversed in time, step k decays by decay[L - k] (1 for the first: it only adds dL/d last state).
        reverse_decay = torch.cat([decay[:, :, :, 1:], torch.ones_like(state)], dim=3).flip(3)
        grad_drive, _ = _linear_scan(reverse_decay, grad_states.flip(3), grad_last, ctx.chunk_size)
        grad_drive = grad_drive.flip(3)
        grad_decay = grad_drive * torch.cat([state, states[:, :, :, :-1]], dim=3)
        grad_state = decay[:, :, :, :1] * grad_drive[:, :, :, :1]
        return grad_decay, grad_drive, grad_state, None


def _scan_segment(state, u, delta, A, B, C, chunk_size: int):
    """Scan one segment from ``state``; returns (y without the D term, state after the segment).

    Layout (batch, groups, channels per group, steps, N): ``u`` and ``delta`` have N = 1, ``A`` is
    (1, G, H, 1, N), ``B``/``C`` broadcast to it (steps = 1 when constant in time), ``state`` has
    steps = 1."""
    decay = torch.exp(delta * A)
    drive = (delta * u) * B  # broadcasts to decay's shape for every layout of B
    states, last = _LinearRecurrence.apply(decay, drive.contiguous(), state, chunk_size)
    y = (states * C).sum(-1)
    return y, last


class _RecomputedSegment(torch.autograd.Function):
    """:func:`_scan_segment` that keeps only its inputs and re-runs itself in the backward pass.

    (torch.utils.checkpoint would do the same but imports torch._dynamo on its first call, seconds of
    CPU time in every fresh process.)"""

    @staticmethod
    def forward(ctx, chunk_size, *inputs):
        ctx.chunk_size = chunk_size
        ctx.save_for_backward(*inputs)
        with torch.no_grad():
            return _scan_segment(*inputs, chunk_size)

    @staticmethod
    def backward(ctx, grad_y, grad_last):
        inputs = [t.detach().requires_grad_(t.requires_grad) for t in ctx.saved_tensors]
        with torch.enable_grad():
            y, last = _scan_segment(*inputs, ctx.chunk_size)
        outputs, grads = zip(*[(o, g) for o, g in ((y, grad_y), (last, grad_last))
                               if g is not None and o.requires_grad])
        wanted = [t for t in inputs if t.requires_grad]
        found = iter(torch.autograd.grad(outputs, wanted, grads, allow_unused=True))
        return (None, *[next(found) if t.requires_grad else None for t in inputs])


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
            args = (state, pieces[0], pieces[1], A5, pieces[2], pieces[3])
            if recompute:
                y, state = _RecomputedSegment.apply(chunk_size, *args)
            else:
                y, state = _scan_segment(*args, chunk_size)
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
