"""The pure-PyTorch selective scan against the step-by-step loop of mamba_ssm's documented recurrence
(``selective_scan_ref``, here ``selective_scan_naive``), and the SS2D block built on it."""
import pytest
import torch
import torch.nn.functional as F

import models.scan as scan_module
from models.scan import selective_scan, selective_scan_naive, selective_scan_torch
from models.ss2d import SS2D


def make_inputs(batch=2, dim=6, state=4, length=37, b_layout="grouped", groups=3, seed=0):
    gen = torch.Generator().manual_seed(seed)
    rand = lambda *shape: torch.randn(*shape, generator=gen)  # noqa: E731
    bc_shape = {"grouped": (batch, groups, state, length), "shared": (batch, state, length),
                "constant": (dim, state)}[b_layout]
    return dict(u=rand(batch, dim, length), delta=rand(batch, dim, length) * 0.5,
                A=-torch.exp(rand(dim, state)), B=rand(*bc_shape), C=rand(*bc_shape),
                D=rand(dim), z=rand(batch, dim, length), delta_bias=rand(dim) * 0.3)


# chunk/segment sizes forcing: one chunk, ragged chunks in one segment, many one-chunk segments
SPLITS = [dict(), dict(chunk_size=8), dict(chunk_size=4, segment_elements=1)]


@pytest.fixture(autouse=True)
def recompute_every_scan(monkeypatch):
    """Test scans are tiny: make them take the recomputed (checkpointed) path of large ones."""
    monkeypatch.setattr(scan_module, "RECOMPUTE_ELEMENTS", 0)


@pytest.mark.parametrize("b_layout", ["grouped", "shared", "constant"])
@pytest.mark.parametrize("split", SPLITS, ids=["default", "chunks8", "segments"])
def test_scan_values_and_last_state_match_the_step_loop(b_layout, split):
    x = make_inputs(b_layout=b_layout)
    expected, expected_state = selective_scan_naive(**x, delta_softplus=True, return_last_state=True)
    out, last_state = selective_scan_torch(**x, delta_softplus=True, return_last_state=True, **split)
    assert out.shape == (2, 6, 37) and out.dtype == torch.float32
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(last_state, expected_state, rtol=1e-5, atol=1e-5)


def test_scan_without_optional_terms_matches_the_step_loop():
    x = make_inputs(length=1, b_layout="shared")
    for key in ("D", "z", "delta_bias"):
        x.pop(key)
    torch.testing.assert_close(selective_scan_torch(**x), selective_scan_naive(**x), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("recompute", [True, False], ids=["recomputed", "kept-graph"])
@pytest.mark.parametrize("split", SPLITS[1:], ids=["chunks8", "segments"])
def test_scan_gradients_match_the_step_loop(split, recompute, monkeypatch):
    if not recompute:
        monkeypatch.setattr(scan_module, "RECOMPUTE_ELEMENTS", 2 ** 62)
    x = make_inputs(length=29, b_layout="grouped")
    leaves = {k: v.clone().requires_grad_() for k, v in x.items()}
    weights = torch.randn(2, 6, 29, generator=torch.Generator().manual_seed(1))
    (selective_scan_torch(**leaves, delta_softplus=True, **split) * weights).sum().backward()
    ours = {k: v.grad for k, v in leaves.items()}
    leaves = {k: v.clone().requires_grad_() for k, v in x.items()}
    (selective_scan_naive(**leaves, delta_softplus=True) * weights).sum().backward()
    for key, grad in ours.items():
        torch.testing.assert_close(grad, leaves[key].grad, rtol=1e-4, atol=1e-5, msg=key)


def test_scan_under_bf16_autocast_accumulates_in_float32():
    x = make_inputs(length=41)
    expected = selective_scan_naive(**x, delta_softplus=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = selective_scan_torch(**x, delta_softplus=True)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)


def test_scan_of_bf16_inputs_returns_bf16_computed_in_float32():
    x = {k: v.bfloat16() for k, v in make_inputs(length=41).items()}
    leaves = {k: v.clone().requires_grad_() for k, v in x.items()}
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = selective_scan_torch(**leaves, delta_softplus=True)
    out.float().sum().backward()
    expected = selective_scan_naive(**x, delta_softplus=True)
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out, expected, rtol=1e-2, atol=1e-2)
    assert all(torch.isfinite(v.grad).all() and v.grad.dtype == torch.bfloat16 for v in leaves.values())


def test_strong_decay_neither_overflows_nor_loses_the_state():
    x = make_inputs(length=64)
    x["A"] = -torch.full_like(x["A"], 200.0)  # exp(-delta * 200) per step: the state forgets at once
    x["delta"] = x["delta"].abs() + 1.0
    x.pop("delta_bias")
    out = selective_scan_torch(**x, chunk_size=16)
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out, selective_scan_naive(**x), rtol=1e-5, atol=1e-5)


def test_scan_on_cpu_dispatches_to_the_pytorch_path():
    x = make_inputs()
    torch.testing.assert_close(selective_scan(**x, delta_softplus=True),
                               selective_scan_torch(**x, delta_softplus=True), rtol=0, atol=0)


def test_scan_rejects_groups_that_do_not_divide_dim():
    x = make_inputs(dim=6, groups=4)
    with pytest.raises(ValueError, match="divisible"):
        selective_scan_torch(**x)


def test_ss2d_has_the_official_parameters_and_no_buffers():
    block = SS2D(d_model=16, d_state=4, expand=1.5)
    shapes = {k: tuple(v.shape) for k, v in block.state_dict().items()}
    assert shapes == {
        "in_proj.weight": (48, 16), "conv2d.weight": (24, 1, 3, 3), "conv2d.bias": (24,),
        "x_proj_weight": (4, 1 + 8, 24), "dt_projs_weight": (4, 24, 1), "dt_projs_bias": (4, 24),
        "A_logs": (96, 4), "Ds": (96,), "out_norm.weight": (24,), "out_norm.bias": (24,),
        "out_proj.weight": (16, 24)}
    assert list(block.buffers()) == []
    dt = F.softplus(block.dt_projs_bias)
    assert dt.min() >= 1e-4 * 0.999 and dt.max() <= 0.1 * 1.001


def test_ss2d_sees_the_whole_image_in_every_direction():
    torch.manual_seed(0)
    block = SS2D(d_model=8, d_state=4)
    x = torch.randn(1, 5, 7, 8, requires_grad=True)
    out = block(x)
    assert out.shape == x.shape
    # the first pixel's output depends on the last pixel (reversed scans), the last on the first
    first = torch.autograd.grad(out[0, 0, 0].sum(), x, retain_graph=True)[0]
    last = torch.autograd.grad(out[0, -1, -1].sum(), x)[0]
    assert first[0, -1, -1].abs().sum() > 0 and last[0, 0, 0].abs().sum() > 0


def test_reference_loop_matches_the_recurrence_by_hand():
    u, delta = torch.tensor([[[2.0, 3.0]]]), torch.tensor([[[0.5, 0.25]]])
    A, B, C, D = torch.tensor([[-2.0]]), torch.tensor([[[1.0, 4.0]]]), torch.tensor([[[3.0, 0.5]]]), torch.tensor([0.1])
    h0 = 0.5 * 1.0 * 2.0
    h1 = torch.exp(torch.tensor(0.25 * -2.0)) * h0 + 0.25 * 4.0 * 3.0
    expected = torch.tensor([[[3.0 * h0 + 0.2, 0.5 * h1 + 0.3]]])
    for scan in (selective_scan_naive, selective_scan_torch):
        torch.testing.assert_close(scan(u, delta, A, B, C, D), expected)
