"""``residual + x @ weight.T + bias`` over the last axis, through oneDNN's matmul on CPU.

torch's ``F.linear`` on a CPU float32 tensor runs MKL's sgemm. oneDNN, the library behind torch's CPU
convolutions, has its own matmul (``torch.ops.mkldnn._linear_pointwise``, the kernel torch.compile's CPU
backend emits for linear layers), and at the shapes of 1x1 convolutions over an image's pixels (many
rows, 48-512 columns) it runs 1.15-1.3x faster on the dev machine's AMD EPYC (README "Speed":
``tools/bench_fastpath.py ops``), with the residual added inside it. :func:`linear` uses it in eager
CPU float32 code, for the forward and for the input gradient; the weight gradient, a long reduction over
the pixels, stays ``torch.mm``, which is faster there. Everywhere else -- CUDA, other dtypes, autocast,
``torch.compile``, ONNX export, a torch without oneDNN, or ``torch.backends.mkldnn.flags(enabled=False)``
-- it is ``F.linear`` / ``torch.addmm`` and autograd as usual; both give the same result to float32
rounding.

This is written by hand because torch exposes oneDNN's matmul only as an inference op: the autograd
function below adds its backward pass.
"""

import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable


def _has_onednn_linear() -> bool:
    if not torch.backends.mkldnn.is_available():
        return False
    try:
        torch.ops.mkldnn._linear_pointwise  # noqa: B018 - resolving the op is the check
    except (AttributeError, RuntimeError):
        return False
    return True


ONEDNN_LINEAR = _has_onednn_linear()


def uses_onednn(x: torch.Tensor, weight: torch.Tensor) -> bool:
    """Whether :func:`linear` runs ``x`` and ``weight`` through oneDNN (the conditions in the module docstring)."""
    return (
        ONEDNN_LINEAR
        and torch.backends.mkldnn.enabled
        and x.device.type == "cpu"
        and x.dtype == weight.dtype == torch.float32
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
        rows = grad.reshape(-1, grad.shape[-1])
        grad_weight = rows.t() @ x.reshape(-1, x.shape[-1]) if needs_weight else None
        grad_bias = rows.sum(0) if needs_bias else None
        return grad_x, grad_weight, grad_bias, grad if needs_residual else None


def linear(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None, residual: torch.Tensor | None = None
) -> torch.Tensor:
    """``F.linear(x, weight, bias)`` over the last axis of ``x``, plus ``residual`` (of the output's shape) if given."""
    if uses_onednn(x, weight):
        return _OneDNNLinear.apply(x, weight, bias, residual)
    if residual is None:
        return F.linear(x, weight, bias)
    # The sum inside the matmul (addmm): no separate pass over the output.
    out = torch.addmm(residual.reshape(-1, weight.shape[0]), x.reshape(-1, weight.shape[1]), weight.t())
    if bias is not None:
        out = out + bias
    return out.view(residual.shape)
