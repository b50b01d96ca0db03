"""Tests for models.darkir (CPU, tiny widths)."""

import pytest
import torch

from models.darkir import DarkIR, FreMLP, darkir_l, darkir_m

TINY = dict(width=8, middle_blk_num_enc=1, middle_blk_num_dec=1,
            enc_blk_nums=[1, 1, 1], dec_blk_nums=[1, 1, 1])


def _tiny_model(seed: int = 0) -> DarkIR:
    """Tiny DarkIR whose zero-initialised gammas/betas are randomised so every branch matters."""
    torch.manual_seed(seed)
    model = DarkIR(**TINY)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith(("gamma", "beta")):
                param.normal_(0.0, 0.5)
    return model


def _num_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("height,width", [(37, 53), (64, 48)])
def test_output_shape_any_size(height, width):
    model = _tiny_model()
    x = torch.rand(2, 3, height, width)
    with torch.no_grad():
        out = model(x)
        side, out_with_side = model(x, side_loss=True)
    assert out.shape == x.shape
    assert torch.isfinite(out).all()
    assert torch.equal(out, out_with_side)
    # The side head works on the padded input downsampled by 2**3.
    assert side.shape == (2, 3, -(-height // 8), -(-width // 8))


def test_identity_at_init():
    """Official init: zero gamma/beta leave only the global residual path plus intro/ending convs."""
    torch.manual_seed(0)
    model = DarkIR(**TINY)
    with torch.no_grad():
        model.ending.weight.zero_()
        model.ending.bias.zero_()
        x = torch.rand(1, 3, 37, 53)
        assert torch.allclose(model(x), x)


def test_every_parameter_gets_finite_gradient():
    model = _tiny_model()
    x = torch.rand(1, 3, 37, 53)
    side, out = model(x, side_loss=True)
    (out.square().mean() + side.square().mean()).backward()
    for name, param in model.named_parameters():
        assert param.grad is not None, name
        assert torch.isfinite(param.grad).all(), name
        assert param.grad.abs().sum() > 0, name


def test_parameter_counts_match_paper():
    assert _num_params(darkir_m()) == 3_321_638
    assert _num_params(darkir_l()) == 12_957_254


def test_official_key_names_and_shapes():
    state = darkir_m().state_dict()
    expected = {
        "intro.weight": (32, 3, 3, 3),
        "ending.weight": (3, 32, 3, 3),
        "downs.0.weight": (64, 32, 2, 2),
        "ups.0.0.weight": (512, 256, 1, 1),
        "side_out.weight": (3, 256, 3, 3),
        "side_out.bias": (3,),
        "encoders.0.modules_list.0.extra_conv.weight": (32, 1, 3, 3),
        "encoders.0.modules_list.0.branches.0.branch.0.weight": (64, 1, 3, 3),
        "encoders.0.modules_list.0.freq.process1.0.weight": (64, 32, 1, 1),
        "encoders.0.modules_list.0.freq.process1.2.weight": (32, 64, 1, 1),
        "encoders.2.modules_list.2.norm2.weight": (128,),
        "middle_blks_enc.modules_list.1.gamma": (1, 256, 1, 1),
        "middle_blks_dec.modules_list.0.extra_conv.weight": (512, 2, 3, 3),
        "middle_blks_dec.modules_list.0.branches.2.branch.0.weight": (512, 1, 3, 3),
        "middle_blks_dec.modules_list.1.sca.1.weight": (256, 256, 1, 1),
        "decoders.2.modules_list.0.conv4.weight": (64, 32, 1, 1),
        "decoders.2.modules_list.0.conv5.weight": (32, 32, 1, 1),
    }
    for key, shape in expected.items():
        assert key in state, key
        assert tuple(state[key].shape) == shape, key
    assert len(state) == 343
    # The official model applies dilations only in decoder blocks.
    assert "encoders.0.modules_list.0.branches.1.branch.0.weight" not in state


def test_strict_state_dict_round_trip(tmp_path):
    source = _tiny_model(seed=1)
    path = tmp_path / "darkir.pt"
    torch.save({"params": source.state_dict()}, path)
    target = DarkIR(**TINY)
    target.load_state_dict(torch.load(path, map_location="cpu", weights_only=True)["params"], strict=True)
    x = torch.rand(1, 3, 40, 24)
    with torch.no_grad():
        assert torch.equal(source(x), target(x))


def test_autocast_bfloat16():
    model = _tiny_model()
    x = torch.rand(1, 3, 37, 53)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        side, out = model(x, side_loss=True)
    assert out.shape == x.shape
    assert torch.isfinite(out).all() and torch.isfinite(side).all()
    with torch.no_grad():
        reference = model(x)
    assert (out.float() - reference).abs().max() < 0.1


def test_mismatched_block_lists_raise():
    with pytest.raises(ValueError, match="enc_blk_nums"):
        DarkIR(width=8, enc_blk_nums=[1, 1], dec_blk_nums=[1, 1, 1])


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_frequency_mlp_runs_in_fp32_under_autocast(dtype):
    """torch.fft rejects half inputs, and the DC term (64 * 37 * 30.5 ~ 72,000) overflows fp16."""
    torch.manual_seed(0)
    freq_mlp = FreMLP(nc=4)
    x = torch.rand(1, 4, 64, 37) + 30.0
    with torch.no_grad():
        reference = freq_mlp(x)
        with torch.autocast("cpu", dtype=dtype):
            out = freq_mlp(x.to(dtype))
    assert out.dtype == dtype
    assert torch.isfinite(out).all()
    assert torch.allclose(out.float(), reference, rtol=0.05, atol=0.05 * reference.abs().max().item())
