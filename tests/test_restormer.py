"""Restormer: official parameter layout, any input size, residual, attention kernels, checkpointing."""

import pytest
import torch
import torch.nn.functional as F

import models.restormer as restormer_module
from models import Restormer
from models.restormer import LayerNorm


def _randomise_temperatures(model: Restormer) -> None:
    # Temperatures start at 1; random values make the attention-kernel comparisons meaningful.
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if name.endswith("attn.temperature"):
                parameter.uniform_(0.5, 2.0)


def test_base_parameter_count():
    model = Restormer.base()
    assert sum(p.numel() for p in model.parameters()) == 26_126_644


def test_official_state_dict_keys_and_shapes():
    state = Restormer.base().state_dict()
    # Key count of the official restormer_arch.Restormer() state dict.
    assert len(state) == 494
    expected_shapes = {
        "encoder_level1.0.attn.temperature": (1, 1, 1),
        "latent.7.attn.temperature": (8, 1, 1),
        "patch_embed.proj.weight": (48, 3, 3, 3),
        "output.weight": (3, 96, 3, 3),
        "encoder_level1.0.norm1.body.weight": (48,),
        "encoder_level1.0.norm1.body.bias": (48,),
        "decoder_level1.3.ffn.project_in.weight": (510, 96, 1, 1),
        "refinement.3.attn.qkv_dwconv.weight": (288, 1, 3, 3),
        "down1_2.body.0.weight": (24, 48, 3, 3),
        "up2_1.body.0.weight": (192, 96, 3, 3),
        "reduce_chan_level3.weight": (192, 384, 1, 1),
    }
    for key, shape in expected_shapes.items():
        assert tuple(state[key].shape) == shape, key
    assert "skip_conv.weight" not in state


def test_bias_free_layer_norm_has_no_bias():
    state = Restormer.base(LayerNorm_type="BiasFree").state_dict()
    assert len(state) == 406
    assert tuple(state["encoder_level1.0.norm1.body.weight"].shape) == (48,)
    assert not any(key.endswith(".body.bias") for key in state)


def test_dual_pixel_variant_has_skip_conv_and_no_residual():
    model = Restormer.tiny(inp_channels=6, dual_pixel_task=True)
    assert tuple(model.state_dict()["skip_conv.weight"].shape) == (16, 8, 1, 1)
    with torch.no_grad():
        model.output.weight.zero_()
        out = model(torch.rand(1, 6, 16, 16))
    assert out.shape == (1, 3, 16, 16)
    assert torch.count_nonzero(out) == 0


def test_layer_norm_known_values():
    # One pixel with channels [1, 3]: mean 2, biased variance 1.
    x = torch.tensor([1.0, 3.0]).view(1, 2, 1, 1)
    scale = 1.0 / (1.0 + 1e-5) ** 0.5
    with_bias = LayerNorm(2, "WithBias")(x)
    bias_free = LayerNorm(2, "BiasFree")(x)
    torch.testing.assert_close(with_bias.flatten(), torch.tensor([-scale, scale]))
    torch.testing.assert_close(bias_free.flatten(), torch.tensor([scale, 3 * scale]))


@pytest.mark.parametrize("size", [(37, 53), (5, 7), (32, 32)])
def test_output_shape_equals_input_shape(size):
    model = Restormer.tiny().eval()
    x = torch.rand(2, 3, *size)
    with torch.no_grad():
        out = model(x)
    assert out.shape == x.shape
    assert torch.isfinite(out).all()


def test_odd_size_is_reflect_padded_and_cropped():
    model = Restormer.tiny().eval()
    x = torch.rand(1, 3, 37, 53)
    padded = F.pad(x, (0, 3, 0, 3), mode="reflect")
    with torch.no_grad():
        out = model(x)
        reference = model(padded)[..., :37, :53] - padded[..., :37, :53] + x
    torch.testing.assert_close(out, reference)


@pytest.mark.parametrize("inp_channels", [4, 6])
def test_extra_input_channels_residual_adds_rgb(inp_channels):
    model = Restormer.tiny(inp_channels=inp_channels).eval()
    x = torch.rand(1, inp_channels, 24, 40)
    with torch.no_grad():
        assert model(x).shape == (1, 3, 24, 40)
        # With a zero output head only the residual remains: the RGB part of the input.
        model.output.weight.zero_()
        torch.testing.assert_close(model(x), x[:, :3], rtol=0, atol=0)


def _gradients(model, x, target):
    model.zero_grad()
    out = model(x)
    F.l1_loss(out, target).backward()
    return out.detach(), {name: p.grad.clone() for name, p in model.named_parameters()}


@pytest.mark.parametrize("layer_norm_type", ["WithBias", "BiasFree"])
def test_fused_attention_matches_matmul_forward_and_gradients(layer_norm_type):
    torch.manual_seed(0)
    model = Restormer.tiny(LayerNorm_type=layer_norm_type, heads=(1, 2, 2, 4), bias=True).train()
    _randomise_temperatures(model)
    x, target = torch.rand(2, 3, 40, 24), torch.rand(2, 3, 40, 24)
    model.attention = "fused"
    fused_out, fused_grads = _gradients(model, x, target)
    model.attention = "matmul"
    matmul_out, matmul_grads = _gradients(model, x, target)
    torch.testing.assert_close(fused_out, matmul_out, rtol=1e-5, atol=1e-5)
    assert not torch.equal(fused_out, x)
    for name, grad in matmul_grads.items():
        torch.testing.assert_close(fused_grads[name], grad, rtol=1e-4, atol=1e-6, msg=name)


def _reference_block(block, x):
    """A transformer block spelled out in (N, C, H, W) from the paper's formulas, as the official code
    computes it: per-pixel norm over channels, 1x1/3x3 convolutions, L2-normalised q and k per head."""

    def norm(module, t):
        body = module.body
        variance = t.var(dim=1, keepdim=True, unbiased=False)
        if hasattr(body, "bias"):
            return (t - t.mean(dim=1, keepdim=True)) / torch.sqrt(variance + 1e-5) * body.weight.view(1, -1, 1, 1) \
                + body.bias.view(1, -1, 1, 1)
        return t / torch.sqrt(variance + 1e-5) * body.weight.view(1, -1, 1, 1)

    attn, ffn = block.attn, block.ffn
    batch, channels, height, width = x.shape
    heads = attn.num_heads
    q, k, v = (t.reshape(batch, heads, channels // heads, height * width)
               for t in attn.qkv_dwconv(attn.qkv(norm(block.norm1, x))).chunk(3, dim=1))
    q, k = F.normalize(q, dim=-1), F.normalize(k, dim=-1)
    out = ((q @ k.transpose(-2, -1)) * attn.temperature).softmax(dim=-1) @ v
    x = x + attn.project_out(out.reshape(batch, channels, height, width))
    gate, value = ffn.dwconv(ffn.project_in(norm(block.norm2, x))).chunk(2, dim=1)
    return x + ffn.project_out(F.gelu(gate) * value)


@pytest.mark.parametrize("attention", restormer_module.ATTENTION_KINDS)
@pytest.mark.parametrize("layer_norm_type, bias, heads", [("WithBias", False, 1), ("BiasFree", True, 3)])
def test_channels_last_block_matches_reference_forward_and_gradients(attention, layer_norm_type, bias, heads):
    # dim 12 with the official expansion 2.66: 31 hidden channels, widened to 32 inside the FFN.
    torch.manual_seed(0)
    block = restormer_module.TransformerBlock(12, heads, 2.66, bias, layer_norm_type, attention)
    with torch.no_grad():
        for name, parameter in block.named_parameters():
            # Scales (norm weights, temperatures) around 1; weights and biases random.
            if name.endswith(("temperature", "norm1.body.weight", "norm2.body.weight")):
                parameter.uniform_(0.5, 1.5)
            else:
                parameter.normal_(0, 0.3)
    assert block.ffn.project_out.in_channels % restormer_module.CHANNEL_ALIGNMENT != 0
    x = torch.randn(2, 12, 9, 11)
    outputs, gradients = [], []
    for forward in (block, lambda t: _reference_block(block, t)):
        block.zero_grad()
        inputs = x.clone().requires_grad_()
        out = forward(inputs)
        (out * torch.linspace(-1, 1, out.numel()).view(out.shape)).sum().backward()
        outputs.append(out.detach())
        gradients.append([inputs.grad] + [p.grad.clone() for p in block.parameters()])
    torch.testing.assert_close(outputs[0], outputs[1], rtol=1e-5, atol=1e-5)
    # float32 sums over ~200 pixels in different orders (oneDNN, MKL, autograd) round in proportion to the
    # gradients' size (entries up to ~90 here, differences up to 2e-5); a wrong formula is off by that size.
    scale = max(reference.abs().max().item() for reference in gradients[1])
    for fast, reference in zip(*gradients):
        torch.testing.assert_close(fast, reference, rtol=1e-5, atol=2e-6 * scale)


def test_output_does_not_depend_on_input_memory_format():
    torch.manual_seed(0)
    model = Restormer.tiny().eval()
    x = torch.rand(1, 3, 24, 32)
    with torch.no_grad():
        torch.testing.assert_close(model(x.contiguous(memory_format=torch.channels_last)), model(x), rtol=0, atol=0)


def test_attention_kind_set_in_constructor_and_after():
    model = Restormer.tiny(attention="matmul")
    assert model.attention == "matmul"
    model.attention = "fused"
    kinds = {m.attention for m in model.modules() if isinstance(m, restormer_module.Attention)}
    assert kinds == {"fused"}


def test_grad_checkpoint_gives_same_gradients_and_only_while_training(monkeypatch):
    torch.manual_seed(0)
    model = Restormer.tiny(num_blocks=(1, 2, 1, 1)).train()
    _randomise_temperatures(model)
    x, target = torch.rand(1, 3, 32, 32), torch.rand(1, 3, 32, 32)

    def gradients():
        model.zero_grad()
        F.l1_loss(model(x), target).backward()
        return {name: p.grad.clone() for name, p in model.named_parameters()}

    plain = gradients()
    calls = []

    def counting_checkpoint(function, *args, **kwargs):
        calls.append(kwargs.get("use_reentrant"))
        return torch.utils.checkpoint.checkpoint(function, *args, **kwargs)

    monkeypatch.setattr(restormer_module, "checkpoint", counting_checkpoint)
    model.grad_checkpoint = True
    checkpointed = gradients()
    # One call per transformer block: 1 + 2 + 1 + 1 encoder/latent, 1 + 2 + 1 decoder, 1 refinement.
    assert calls == [False] * 10
    for name, grad in plain.items():
        torch.testing.assert_close(checkpointed[name], grad, rtol=1e-5, atol=1e-7, msg=name)

    # Evaluation with autograd on (e.g. a validation loss) must not checkpoint either.
    calls.clear()
    model.eval()
    model(x)
    assert calls == []


@pytest.mark.parametrize("layer_norm_type", ["WithBias", "BiasFree"])
def test_every_parameter_gets_finite_gradient(layer_norm_type):
    torch.manual_seed(0)
    model = Restormer.tiny(LayerNorm_type=layer_norm_type, bias=True).train()
    F.l1_loss(model(torch.rand(2, 3, 32, 32)), torch.rand(2, 3, 32, 32)).backward()
    for name, parameter in model.named_parameters():
        assert parameter.grad is not None, name
        assert torch.isfinite(parameter.grad).all(), name
        assert parameter.grad.abs().sum() > 0, name


def test_checkpoint_file_loads_strictly_into_either_attention(tmp_path):
    torch.manual_seed(0)
    source = Restormer.tiny(LayerNorm_type="BiasFree").eval()
    _randomise_temperatures(source)
    path = tmp_path / "restormer.pth"
    torch.save({"params": source.state_dict()}, path)
    target = Restormer.tiny(LayerNorm_type="BiasFree", attention="matmul").eval()
    target.load_state_dict(torch.load(path, weights_only=True)["params"], strict=True)
    x = torch.rand(1, 3, 24, 24)
    with torch.no_grad():
        torch.testing.assert_close(target(x), source(x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(attention="flash"), "attention must be one of"),
        (dict(LayerNorm_type="GroupNorm"), "LayerNorm_type must be one of"),
        (dict(num_blocks=(1, 1, 1)), "num_blocks and heads need one entry per level"),
        (dict(heads=(1, 3, 1, 1)), "not divisible by heads=3"),
        (dict(inp_channels=1, out_channels=3), r"inp_channels \(1\) must be >= out_channels \(3\)"),
    ],
)
def test_bad_config_raises(kwargs, message):
    with pytest.raises(ValueError, match=message):
        Restormer.tiny(**kwargs)


def test_bad_attention_assignment_and_input_raise():
    model = Restormer.tiny()
    with pytest.raises(ValueError, match="attention must be one of"):
        model.attention = "flash"
    with pytest.raises(ValueError, match=r"expects input of shape \(N, 3, H, W\), got \(1, 4, 16, 16\)"):
        model(torch.rand(1, 4, 16, 16))
