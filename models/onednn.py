"""Two CPU kernels of oneDNN that torch's eager ops do not reach, each with a plain-torch fallback.

* :func:`linear` -- ``residual + x @ weight.T + bias`` over the last axis. torch's ``F.linear`` on a CPU
  float32 tensor runs MKL's sgemm; oneDNN, the library behind torch's CPU convolutions, has its own matmul
  (``torch.ops.mkldnn._linear_pointwise``, the kernel torch.compile's CPU backend emits for linear layers).
  At the shapes of 1x1 convolutions over an image's pixels (many rows, 48-512 columns) it is 1.1-1.5x
  faster forward and for the input gradient on the dev machine's AMD EPYC, with the residual added
  inside it; for the weight gradient, a long reduction over the pixels, ``torch.mm`` is
  faster (README "Speed": ``tools/bench_fastpath.py ops``). torch exposes that matmul only as an
  inference op, so the autograd function below adds its backward pass: the input gradient through oneDNN,
  the weight gradient through ``torch.mm``.
* :func:`depthwise_gelu_gate` -- ``gelu(depthwise(gate)) * depthwise(value)``, Restormer's gated FFN. When
  no gradient is wanted, each depthwise convolution runs with the next elementwise step fused into it
  (``torch.ops.mkldnn._convolution_pointwise``: gelu after the first, the product with it after the
  second), two passes over the pixels fewer: 1.1-3.5x for these three steps (``tools/bench_fastpath.py
  ops``), 1.08x for Restormer Base's forward at 256² (one thread). Training keeps the plain ops: their
  backward needs the convolutions' outputs, which the fused kernel never writes.

Both apply to eager CPU float32 code only; everywhere else -- CUDA, other dtypes, autocast,
``torch.compile``, ONNX export, a torch without oneDNN, or ``torch.backends.mkldnn.enabled = False`` --
they are the plain ops, which give the same result to float32 rounding.
"""

import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable


def _has_onednn_kernels() -> bool:
    if not torch.backends.mkldnn.is_available():
        return False
    try:
        torch.ops.mkldnn._linear_pointwise  # noqa: B018 - resolving the ops is the check
        torch.ops.mkldnn._convolution_pointwise  # noqa: B018
    except (AttributeError, RuntimeError):
        return False
    return True


ONEDNN = _has_onednn_kernels()


def uses_onednn(*tensors: torch.Tensor) -> bool:
    """Whether ``tensors`` go through the oneDNN kernels here (the conditions in the module docstring)."""
    return (
        ONEDNN
        and torch.backends.mkldnn.enabled
        and all(t.device.type == "cpu" and t.dtype == torch.float32 for t in tensors)
        and not torch.is_autocast_enabled("cpu")
        and not torch.compiler.is_compiling()
        and not torch.onnx.is_in_onnx_export()
        and not torch.jit.is_tracing()
    )


def onednn_matmul(x, weight, bias, residual):
    """oneDNN's ``residual + x @ weight.T + bias`` (``bias``, ``residual`` may be None), without autograd."""
    if residual is None:
        return torch.ops.mkldnn._linear_pointwise(x, weight, bias, "none", [], "")
    return torch.ops.mkldnn._linear_pointwise.binary(x, residual, weight, bias, "add")


class _OneDNNLinear(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, residual):
        ctx.save_for_backward(x, weight)
        return onednn_matmul(x, weight, bias, residual)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):
        x, weight = ctx.saved_tensors
        needs_x, needs_weight, needs_bias, needs_residual = ctx.needs_input_grad
        grad_x = onednn_matmul(grad, weight.t(), None, None) if needs_x else None
        grad_weight = grad_bias = None
        if needs_weight or needs_bias:  # (a non-contiguous grad is copied to rows only then)
            rows = grad.reshape(-1, grad.shape[-1])
            grad_weight = rows.t() @ x.reshape(-1, x.shape[-1]) if needs_weight else None
            grad_bias = rows.sum(0) if needs_bias else None
        return grad_x, grad_weight, grad_bias, grad if needs_residual else None


def linear(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None, residual: torch.Tensor | None = None
) -> torch.Tensor:
    """``F.linear(x, weight, bias)`` over the last axis of ``x``, plus ``residual`` (of the output's shape) if given."""
    if uses_onednn(x, weight, *(t for t in (bias, residual) if t is not None)):
        return _OneDNNLinear.apply(x, weight, bias, residual)
    if residual is None:
        return F.linear(x, weight, bias)
    # The sum inside the matmul (addmm): no separate pass over the output.
    out = torch.addmm(residual.reshape(-1, weight.shape[0]), x.reshape(-1, weight.shape[1]), weight.t())
    if bias is not None:
        out = out + bias
    return out.view(residual.shape)


def depthwise_gelu_gate(
    gate: torch.Tensor,
    value: torch.Tensor,
    gate_weight: torch.Tensor,
    value_weight: torch.Tensor,
    gate_bias: torch.Tensor | None = None,
    value_bias: torch.Tensor | None = None,
) -> torch.Tensor:
    """``gelu(conv(gate)) * conv(value)`` for depthwise 3x3 convolutions (padding 1) of (N, C, H, W) tensors."""
    channels = gate.shape[1]
    tensors = [gate, value, gate_weight, value_weight] + [b for b in (gate_bias, value_bias) if b is not None]
    if uses_onednn(*tensors) and not (torch.is_grad_enabled() and any(t.requires_grad for t in tensors)):
        conv = torch.ops.mkldnn._convolution_pointwise
        geometry = ([1, 1], [1, 1], [1, 1], channels)  # padding, stride, dilation, groups
        activated = conv(gate, gate_weight, gate_bias, *geometry, "gelu", [], "none")
        return conv.binary(value, activated, value_weight, value_bias, *geometry, "mul", None, None, [], None)
    activated = F.gelu(F.conv2d(gate, gate_weight, gate_bias, padding=1, groups=channels))
    return activated * F.conv2d(value, value_weight, value_bias, padding=1, groups=channels)
