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


def ss2d_by_directions(block, x):
    """SS2D's forward spelled out one scan direction at a time: each of the four orders (row-major,
    column-major, both reversed) is gathered, scanned with its own projections by the reference loop,
    and scattered back to row-major positions before the four are summed."""
    batch, height, width, _ = x.shape
    branch, gate = block.in_proj(x).chunk(2, dim=-1)
    branch = F.silu(block.conv2d(branch.permute(0, 3, 1, 2))).flatten(2)  # (B, d, L) row-major
    inner, rank, state = block.d_inner, block.dt_rank, block.d_state
    positions = torch.arange(height * width).reshape(height, width)
    orders = [positions.flatten(), positions.t().flatten()]
    orders += [order.flip(0) for order in orders]
    total = torch.zeros_like(branch)
    for k, order in enumerate(orders):
        sequence = branch[:, :, order]
        dt, b, c = torch.einsum("bdl,cd->bcl", sequence, block.x_proj_weight[k]).split([rank, state, state], dim=1)
        dt = torch.einsum("brl,dr->bdl", dt, block.dt_projs_weight[k])
        channels = slice(k * inner, (k + 1) * inner)
        y = selective_scan_naive(sequence, dt, -torch.exp(block.A_logs[channels]), b, c, block.Ds[channels],
                                 delta_bias=block.dt_projs_bias[k], delta_softplus=True)
        total[:, :, order] += y
    y = total.transpose(1, 2).reshape(batch, height, width, inner)
    return block.out_proj(block.out_norm(y) * F.silu(gate))


def test_ss2d_equals_its_four_scans_taken_one_direction_at_a_time():
    torch.manual_seed(0)
    block = SS2D(d_model=8, d_state=4, dt_rank=2)
    with torch.no_grad():  # non-trivial D and conv so every term shows
        block.Ds.uniform_(-1, 1)
        block.dt_projs_bias.add_(1.0)
    x = torch.randn(2, 5, 7, 8)  # two images, H != W: direction and layout slips show
    with torch.no_grad():
        torch.testing.assert_close(block(x), ss2d_by_directions(block, x), rtol=1e-4, atol=1e-5)


def test_ss2d_defaults_are_the_official_ones():
    block = SS2D(d_model=32)
    assert (block.d_model, block.d_state, block.d_conv, block.expand) == (32, 16, 3, 2.0)
    assert (block.d_inner, block.dt_rank) == (64, 2)  # int(expand * d_model), ceil(d_model / 16)
    assert block.in_proj.bias is None and block.out_proj.bias is None and block.conv2d.bias is not None
    assert block.dropout is None
    assert SS2D(d_model=32, dt_rank=3).dt_rank == 3


def test_ss2d_bias_flags_reach_the_projections_and_the_conv():
    block = SS2D(d_model=8, d_state=2, bias=True, conv_bias=False)
    assert block.in_proj.bias.shape == (32,) and block.out_proj.bias.shape == (8,)
    assert block.conv2d.bias is None


def test_ss2d_builds_its_parameters_on_the_requested_device_and_dtype():
    on_meta = SS2D(d_model=8, d_state=2, device="meta")
    # out_norm takes no factory arguments in the official code either
    assert {name for name, p in on_meta.named_parameters() if p.device.type != "meta"} == {"out_norm.weight",
                                                                                         "out_norm.bias"}
    double = SS2D(d_model=8, d_state=2, dtype=torch.float64)
    dtypes = {name: p.dtype for name, p in double.named_parameters()}
    assert dtypes.pop("A_logs") == torch.float32  # A is float32 whatever the factory dtype
    assert dtypes.pop("Ds") == torch.float32 and dtypes.pop("out_norm.weight") == torch.float32
    dtypes.pop("out_norm.bias")
    assert set(dtypes.values()) == {torch.float64}


def test_ss2d_a_log_stays_float32_under_a_float64_default_dtype():
    default = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        block = SS2D(d_model=8, d_state=3)
    finally:
        torch.set_default_dtype(default)
    assert block.A_logs.dtype == torch.float32
    torch.testing.assert_close(block.A_logs[5], torch.log(torch.tensor([1.0, 2.0, 3.0])))


def test_ss2d_projection_inits_use_their_documented_bounds():
    torch.manual_seed(0)
    block = SS2D(d_model=16, d_state=4, dt_rank=4, dt_scale=1.5)
    x_bound = block.d_inner ** -0.5
    dt_std = 4 ** -0.5 * 1.5
    for weight, bound in [(block.x_proj_weight, x_bound), (block.dt_projs_weight, dt_std)]:
        assert weight.abs().max() <= bound
        assert weight.min() < -0.8 * bound and weight.max() > 0.8 * bound  # spread over [-bound, bound]


def test_ss2d_constant_dt_init_sets_every_dt_weight_to_the_std():
    constant = SS2D(d_model=8, d_state=2, dt_rank=4, dt_init="constant").dt_projs_weight
    assert torch.equal(constant, torch.full_like(constant, 0.5))  # 4 ** -0.5 * dt_scale 1
    scaled = SS2D(d_model=8, d_state=2, dt_rank=4, dt_init="constant", dt_scale=3.0).dt_projs_weight
    assert torch.equal(scaled, torch.full_like(scaled, 1.5))


def test_ss2d_rejects_an_unknown_dt_init():
    with pytest.raises(ValueError, match="dt_init must be 'random' or 'constant', got 'normal'"):
        SS2D(d_model=8, dt_init="normal")


def test_ss2d_dt_bias_is_log_uniform_over_dt_min_to_dt_max():
    torch.manual_seed(0)
    dt = F.softplus(SS2D(d_model=16, d_state=2, dt_min=0.01, dt_max=0.1).dt_projs_bias)
    assert dt.min() >= 0.01 * 0.999 and dt.max() <= 0.1 * 1.001
    assert dt.min() < 0.015 and dt.max() > 0.07  # the whole range, not a corner of it


def test_ss2d_a_and_d_are_excluded_from_weight_decay():
    block = SS2D(d_model=8, d_state=2)
    assert block.A_logs._no_weight_decay is True and block.Ds._no_weight_decay is True


def test_ss2d_dropout_applies_to_the_output_in_training_only():
    torch.manual_seed(0)
    block = SS2D(d_model=8, d_state=2, dropout=0.5)
    assert isinstance(block.dropout, torch.nn.Dropout) and block.dropout.p == 0.5
    x = torch.randn(1, 4, 4, 8)
    with torch.no_grad():
        clean = block.eval()(x)
        dropped = block.train()(x)
    zeroed = dropped == 0
    assert 0 < zeroed.sum() < zeroed.numel()
    torch.testing.assert_close(dropped[~zeroed], 2 * clean[~zeroed])


class LooksLikeCuda(torch.Tensor):
    """A CPU tensor that reports is_cuda, to reach the fused-kernel branch without a GPU."""

    @property
    def is_cuda(self):
        return True


def test_scan_hands_cuda_tensors_and_every_argument_to_the_fused_kernel(monkeypatch):
    calls = []
    monkeypatch.setattr(scan_module, "mamba_ssm_scan", lambda: lambda *args: calls.append(args) or "fused")
    x = make_inputs()
    u = x["u"].as_subclass(LooksLikeCuda)
    args = (u, x["delta"], x["A"], x["B"], x["C"], x["D"], x["z"], x["delta_bias"], True, True)
    assert selective_scan(*args) == "fused"
    assert len(calls) == 1 and all(a is b for a, b in zip(calls[0], args)) and len(calls[0]) == 10


def test_scan_without_the_fused_kernel_runs_the_pytorch_path_on_cuda_tensors(monkeypatch):
    monkeypatch.setattr(scan_module, "mamba_ssm_scan", lambda: None)
    x = make_inputs()
    x["u"] = x["u"].as_subclass(LooksLikeCuda)
    out = selective_scan(**x, delta_softplus=True)
    expected = selective_scan_naive(**make_inputs(), delta_softplus=True)
    torch.testing.assert_close(out.as_subclass(torch.Tensor), expected, rtol=1e-5, atol=1e-5)


def test_scan_defaults_to_no_softplus_and_returns_the_last_state_when_asked():
    x = make_inputs()
    del x["z"], x["delta_bias"]
    x["delta"] = x["delta"].abs()  # steps that decay without the softplus
    torch.testing.assert_close(selective_scan(**x), selective_scan_naive(**x), rtol=1e-5, atol=1e-5)
    out, last = selective_scan(**x, return_last_state=True)
    ref_out, ref_last = selective_scan_naive(**x, return_last_state=True)
    torch.testing.assert_close(out, ref_out, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(last, ref_last, rtol=1e-5, atol=1e-5)
    assert last.shape == (2, 6, 4)


def test_scan_carries_the_state_into_segments_of_several_chunks():
    # 37 steps, segments of 8 (two chunks of 4): the state entering segments 2..5 passes through
    # their first chunk only, forward and backward.
    x = make_inputs(length=37)
    for t in x.values():
        t.requires_grad_(True)
    elements = 2 * 6 * 4 * 8
    out, last = selective_scan_torch(**x, delta_softplus=True, return_last_state=True, chunk_size=4,
                                     segment_elements=elements)
    ref_out, ref_last = selective_scan_naive(**x, delta_softplus=True, return_last_state=True)
    torch.testing.assert_close(out, ref_out)
    torch.testing.assert_close(last, ref_last)
    weights = torch.randn_like(out)
    grads = torch.autograd.grad((out * weights).sum() + last.sum(), list(x.values()))
    ref_grads = torch.autograd.grad((ref_out * weights).sum() + ref_last.sum(), list(x.values()))
    for name, grad, ref in zip(x, grads, ref_grads):
        torch.testing.assert_close(grad, ref, rtol=1e-4, atol=1e-4, msg=name)


def test_recomputed_scan_gives_the_gradient_of_c_alone():
    # only C requires grad: the last state does not depend on it
    x = make_inputs()
    x["C"].requires_grad_(True)
    grad, = torch.autograd.grad(selective_scan_torch(**x, chunk_size=8).sum(), x["C"])
    ref, = torch.autograd.grad(selective_scan_naive(**x).sum(), x["C"])
    torch.testing.assert_close(grad, ref)


def test_scan_rejects_complex_a_mismatched_groups_and_bad_b_c_ranks():
    x = make_inputs()
    with pytest.raises(ValueError, match="^selective_scan_torch supports real A only$"):
        selective_scan_torch(**{**x, "A": x["A"].to(torch.complex64)})
    with pytest.raises(ValueError, match=r"B and C must have the same number of groups, got \[2, 3\]"):
        selective_scan_torch(**{**x, "B": torch.randn(2, 2, 4, 37)})
    with pytest.raises(ValueError, match=r"^B must have 2, 3 or 4 dimensions, got shape \(2, 3, 4, 37, 1\)$"):
        selective_scan_torch(**{**x, "B": torch.randn(2, 3, 4, 37, 1)})
    with pytest.raises(ValueError, match=r"^C must have 2, 3 or 4 dimensions, got shape \(4,\)$"):
        selective_scan_torch(**{**x, "C": torch.randn(4)})


def counting_segments(monkeypatch):
    calls = []
    scan_segment = scan_module._scan_segment
    monkeypatch.setattr(scan_module, "_scan_segment",
                        lambda state, u, *rest: calls.append(u.shape[3]) or scan_segment(state, u, *rest))
    return calls


def test_one_state_value_per_step_fills_a_whole_segment(monkeypatch):
    calls = counting_segments(monkeypatch)
    x = make_inputs(batch=1, dim=1, state=1, length=16, b_layout="shared")
    selective_scan_torch(**x, chunk_size=4, segment_elements=8)
    assert calls == [8, 8]


def counting_recomputed_segments(monkeypatch):
    calls = []
    original = scan_module._RecomputedSegment

    class Counting(original):
        @staticmethod
        def forward(ctx, chunk_size, *inputs):
            calls.append(chunk_size)
            return original.forward(ctx, chunk_size, *inputs)

    monkeypatch.setattr(scan_module, "_RecomputedSegment", Counting)
    return calls


def test_scans_recompute_only_above_the_threshold_and_only_for_gradients(monkeypatch):
    calls = counting_recomputed_segments(monkeypatch)
    elements = 2 * 6 * 4 * 37  # batch * dim * N * L
    x = make_inputs()
    x["u"].requires_grad_(True)
    monkeypatch.setattr(scan_module, "RECOMPUTE_ELEMENTS", elements)
    selective_scan_torch(**x)
    assert calls == []  # at the threshold: the graph is kept
    monkeypatch.setattr(scan_module, "RECOMPUTE_ELEMENTS", elements - 1)
    selective_scan_torch(**x).sum().backward()
    assert calls == [32]  # one segment, recomputed
    calls.clear()
    with torch.no_grad():
        selective_scan_torch(**x)
    selective_scan_torch(**make_inputs())  # nothing requires grad
    assert calls == []
