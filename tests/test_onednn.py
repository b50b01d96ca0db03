"""models/onednn.py: oneDNN's matmul (with its hand-written backward) and fused gated depthwise convolutions equal
the plain ops, and run exactly when they should."""

import contextlib

import pytest
import torch
import torch.nn.functional as F
from torch.profiler import ProfilerActivity, profile

from models import onednn
from models.onednn import depthwise_gelu_gate, linear, uses_onednn
from models.restormer import Restormer

pytestmark = pytest.mark.skipif(not onednn.ONEDNN, reason="this torch build has no oneDNN")


def _onednn_calls(function, op="mkldnn::_linear_pointwise"):
    with profile(activities=[ProfilerActivity.CPU]) as profiler:
        function()
    return sum(event.name == op for event in profiler.events())


FUSED_CONVOLUTION = "mkldnn::_convolution_pointwise"


def _inputs(with_bias, with_residual, transposed_weight=False):
    torch.manual_seed(0)
    x = torch.randn(2, 5, 7, 12, requires_grad=True)
    # A transposed weight is what the backward hands oneDNN; the FFN's widened weights are fresh tensors.
    weight = (torch.randn(12, 20).t() if transposed_weight else torch.randn(20, 12)).requires_grad_()
    bias = torch.randn(20, requires_grad=True) if with_bias else None
    residual = torch.randn(2, 5, 7, 20, requires_grad=True) if with_residual else None
    return x, weight, bias, residual


@pytest.mark.parametrize("with_bias, with_residual, transposed_weight",
                         [(False, False, False), (True, False, False), (False, True, True), (True, True, False)])
def test_onednn_linear_matches_f_linear_forward_and_every_gradient(with_bias, with_residual, transposed_weight):
    tensors = _inputs(with_bias, with_residual, transposed_weight)
    x, weight, bias, residual = tensors
    assert uses_onednn(x, weight)
    results, backward_names = [], []
    for function in (linear, lambda x, w, b, r: F.linear(x, w, b) + (0 if r is None else r)):
        for tensor in tensors:
            if tensor is not None:
                tensor.grad = None
        out = function(*tensors)
        backward_names.append(type(out.grad_fn).__name__)
        (out * torch.linspace(-1, 1, out.numel()).view(out.shape)).sum().backward()
        results.append([out.detach()] + [t.grad.clone() for t in tensors if t is not None])
    assert backward_names[0] == "_OneDNNLinearBackward" != backward_names[1]
    for fast, reference in zip(*results):
        torch.testing.assert_close(fast, reference, rtol=1e-5, atol=1e-5)


def test_cpu_float32_runs_through_onednn_with_its_own_backward():
    x, weight, bias, residual = _inputs(True, True)
    out = linear(x, weight, bias, residual)
    assert type(out.grad_fn).__name__ == "_OneDNNLinearBackward"
    # forward: one call; backward: one more for the input gradient (the weight gradient is torch.mm)
    assert _onednn_calls(lambda: linear(x, weight, bias, residual).sum().backward()) == 2
    with torch.no_grad():
        assert _onednn_calls(lambda: linear(x, weight)) == 1


def test_gradients_only_of_what_requires_them():
    x, weight, bias, residual = _inputs(True, True)
    x.requires_grad_(False)
    residual.requires_grad_(False)
    # no input gradient wanted: the backward makes no oneDNN call, only the weight and bias gradients
    assert _onednn_calls(lambda: linear(x, weight, bias, residual).sum().backward()) == 1
    assert x.grad is None and residual.grad is None
    torch.testing.assert_close(bias.grad, torch.full((20,), 70.0))
    torch.testing.assert_close(weight.grad, x.reshape(-1, 12).sum(0).expand(20, 12))


@pytest.mark.parametrize("condition", ["float64", "mkldnn disabled", "autocast", "compiling", "onnx export"])
def test_plain_ops_where_onednn_does_not_apply(condition, monkeypatch):
    x, weight, bias, residual = _inputs(True, True)
    context = contextlib.nullcontext()
    if condition == "mkldnn disabled":
        monkeypatch.setattr(torch.backends.mkldnn, "enabled", False)
    if condition == "float64":
        x, weight, bias, residual = (t.detach().double().requires_grad_() for t in (x, weight, bias, residual))
    if condition == "autocast":
        context = torch.autocast("cpu", dtype=torch.bfloat16)
    if condition == "compiling":
        monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)
    if condition == "onnx export":
        monkeypatch.setattr(torch.onnx, "is_in_onnx_export", lambda: True)
    with context:
        assert not uses_onednn(x, weight)
        assert _onednn_calls(lambda: linear(x, weight, bias, residual)) == 0
        out = linear(x, weight, bias, residual)
    assert type(out.grad_fn).__name__ != "_OneDNNLinearBackward"
    expected = F.linear(x, weight, bias) + residual
    tolerance = 0.05 if condition == "autocast" else 1e-5  # autocast runs the matmul in bfloat16
    torch.testing.assert_close(out.float(), expected.float(), rtol=tolerance, atol=tolerance)


def test_double_backward_is_refused_not_wrong():
    x, weight, bias, residual = _inputs(False, False)
    (grad_x,) = torch.autograd.grad(linear(x, weight).square().sum(), x, create_graph=True)
    with pytest.raises(RuntimeError, match="once_differentiable"):
        grad_x.sum().backward()


def test_restormer_trains_through_onednn_and_equals_the_plain_ops(monkeypatch):
    torch.manual_seed(0)
    model = Restormer.tiny()
    x = torch.rand(1, 3, 16, 16)
    results = []
    for enabled in (True, False):
        model.zero_grad(set_to_none=True)
        monkeypatch.setattr(torch.backends.mkldnn, "enabled", enabled)
        calls = _onednn_calls(lambda: F.l1_loss(model(x), x.flip(-1)).backward())
        out = model(x).detach()
        results.append((calls, out, [p.grad.clone() for p in model.parameters()]))
    # forward and input gradient of every block's pixel-sized 1x1 convolutions: qkv, the FFN's two halves in
    # and its one out (the fused attention folds its project_out into the attention map)
    blocks = sum(1 for module in model.modules() if type(module).__name__ == "TransformerBlock")
    assert results[0][0] == 2 * 4 * blocks and results[1][0] == 0
    torch.testing.assert_close(results[0][1], results[1][1], rtol=1e-5, atol=1e-5)
    for fast, plain in zip(results[0][2], results[1][2]):
        torch.testing.assert_close(fast, plain, rtol=1e-4, atol=1e-5)


def _gate_inputs(with_bias, requires_grad=False):
    torch.manual_seed(0)
    gate, value = (torch.randn(2, 9, 11, 16).permute(0, 3, 1, 2).requires_grad_(requires_grad) for _ in range(2))
    weights = [(torch.randn(16, 1, 3, 3) * 0.5).requires_grad_(requires_grad) for _ in range(2)]
    biases = [torch.randn(16).requires_grad_(requires_grad) if with_bias else None for _ in range(2)]
    return gate, value, *weights, *biases


def _plain_gelu_gate(gate, value, gate_weight, value_weight, gate_bias, value_bias):
    return (F.gelu(F.conv2d(gate, gate_weight, gate_bias, padding=1, groups=16))
            * F.conv2d(value, value_weight, value_bias, padding=1, groups=16))


@pytest.mark.parametrize("with_bias", [False, True])
@pytest.mark.parametrize("mode", ["inference_mode", "no_grad", "frozen tensors"])
def test_fused_gelu_gate_without_gradients_equals_the_plain_ops(with_bias, mode):
    tensors = _gate_inputs(with_bias)
    context = {"inference_mode": torch.inference_mode(), "no_grad": torch.no_grad(),
               "frozen tensors": contextlib.nullcontext()}[mode]
    with context:
        # two fused convolutions: gelu after the gate's, the product after the value's
        assert _onednn_calls(lambda: depthwise_gelu_gate(*tensors), FUSED_CONVOLUTION) == 2
        out = depthwise_gelu_gate(*tensors)
        expected = _plain_gelu_gate(*tensors)
    assert out.shape == (2, 16, 9, 11) and out.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("with_bias", [False, True])
def test_gelu_gate_with_gradients_runs_the_plain_ops_and_their_backward(with_bias):
    tensors = _gate_inputs(with_bias, requires_grad=True)
    assert _onednn_calls(lambda: depthwise_gelu_gate(*tensors), FUSED_CONVOLUTION) == 0
    results = []
    for function in (depthwise_gelu_gate, _plain_gelu_gate):
        for tensor in tensors:
            if tensor is not None:
                tensor.grad = None
        out = function(*tensors)
        (out * torch.linspace(-1, 1, out.numel()).view(out.shape)).sum().backward()
        results.append([out.detach()] + [t.grad.clone() for t in tensors if t is not None])
    for fast, reference in zip(*results):
        torch.testing.assert_close(fast, reference, rtol=0, atol=0)


def test_gelu_gate_falls_back_to_the_plain_ops_with_onednn_disabled(monkeypatch):
    tensors = _gate_inputs(True)
    monkeypatch.setattr(torch.backends.mkldnn, "enabled", False)
    with torch.inference_mode():
        assert _onednn_calls(lambda: depthwise_gelu_gate(*tensors), FUSED_CONVOLUTION) == 0
        torch.testing.assert_close(depthwise_gelu_gate(*tensors), _plain_gelu_gate(*tensors))


def test_restormer_inference_fuses_every_ffn_and_equals_the_plain_ops(monkeypatch):
    torch.manual_seed(0)
    model = Restormer.tiny(bias=True).eval()
    x = torch.rand(1, 3, 16, 16)
    blocks = sum(1 for module in model.modules() if type(module).__name__ == "TransformerBlock")
    with torch.inference_mode():
        assert _onednn_calls(lambda: model(x), FUSED_CONVOLUTION) == 2 * blocks
        fused = model(x)
        monkeypatch.setattr(torch.backends.mkldnn, "enabled", False)
        assert _onednn_calls(lambda: model(x), FUSED_CONVOLUTION) == 0
        plain = model(x)
    torch.testing.assert_close(fused, plain, rtol=1e-5, atol=1e-5)
