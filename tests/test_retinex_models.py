"""RetinexFormer and RetinexMamba: the official layouts (catalog configs' counts and full key/shape
sets), strict loading of published files (both RetinexMamba namings), any size, extra channels, the
illumination output, gradients, bf16, checkpointing."""
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from models.retinexformer import SIZE_MULTIPLE, RetinexFormer
from models.retinexmamba import RetinexMamba
from utils.checkpoint import CheckpointError, load_pretrained

DATA = Path(__file__).parent / "data"
MODELS = {"RetinexFormer": RetinexFormer, "RetinexMamba": RetinexMamba}
# Tiny widths; RetinexMamba's pure-PyTorch scan is the slow part on a CPU, so its states are small too.
TINY = {RetinexFormer: dict(n_feat=8, stage=1, num_blocks=[1, 1, 1]),
        RetinexMamba: dict(n_feat=4, stage=1, num_blocks=[1, 1, 1], d_state=2)}


def official_key_shapes(name: str) -> dict:
    """The key -> shape listing of ``tests/data/<name>`` (written from an instance of the official class)."""
    shapes = {}
    for line in (DATA / name).read_text().splitlines():
        if line and not line.startswith("#"):
            key, shape = line.split()
            shapes[key] = tuple(int(size) for size in shape.split("x"))
    return shapes


def tiny(cls, seed: int = 0, **overrides):
    """A tiny model whose weights are all perturbed (zero-initialised biases and unit rescales too),
    so equality tests compare every tensor's effect."""
    torch.manual_seed(seed)
    model = cls(**{**TINY[cls], **overrides})
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(0.05 * torch.randn_like(parameter))
    return model.eval()


def test_retinexformer_catalog_config_matches_the_official_layout():
    model = RetinexFormer(in_channels=3, out_channels=3, n_feat=40, stage=1, num_blocks=[1, 2, 2])
    assert sum(p.numel() for p in model.parameters()) == 1_605_701
    assert list(model.buffers()) == []
    shapes = {key: tuple(value.shape) for key, value in model.state_dict().items()}
    assert shapes == official_key_shapes("retinexformer_catalog_keys.txt")


def test_retinexmamba_catalog_config_matches_the_official_layout():
    model = RetinexMamba(in_channels=3, out_channels=3, n_feat=40, stage=1, num_blocks=[1, 2, 2])
    assert sum(p.numel() for p in model.parameters()) == 4_589_001
    assert list(model.buffers()) == []
    shapes = {key: tuple(value.shape) for key, value in model.state_dict().items()}
    assert shapes == official_key_shapes("retinexmamba_catalog_keys.txt")


def test_retinexmamba_d_state_doubles_per_level_as_the_official_loop():
    restorer = RetinexMamba(n_feat=8, stage=1, num_blocks=[1, 1, 1], d_state=4).body[0].Restorer
    d_states = [layer[0].blocks[0][1].d_state for layer in restorer.encoder_layers]
    d_states.append(restorer.bottleneck.blocks[0][1].d_state)
    d_states += [layer[2].blocks[0][1].d_state for layer in restorer.decoder_layers]
    assert d_states == [4, 8, 16, 16, 8]


def test_older_retinexmamba_naming_loads_and_is_reported(tmp_path, capsys):
    source = tiny(RetinexMamba, seed=2, stage=2)
    older = {key.replace(".Restorer.", ".denoiser."): value for key, value in source.state_dict().items()}
    assert any(".denoiser." in key for key in older)
    path = tmp_path / "older.pth"
    torch.save({"params": older}, path)
    target = RetinexMamba(**{**TINY[RetinexMamba], "stage": 2}).eval()
    load_pretrained(target, path, strict=True)
    assert "older RetinexMamba naming" in capsys.readouterr().out
    x = torch.rand(1, 3, 16, 20)
    with torch.no_grad():
        torch.testing.assert_close(target(x), source(x), rtol=0, atol=0)


def test_retinexformer_defaults_are_the_official_ones():
    # The official default n_feat=31 cannot be built (31 channels in the estimator's 4 groups), in
    # the official code too; the error says why.
    with pytest.raises(ValueError, match=r"n_feat \(31\) must be divisible by 4"):
        RetinexFormer()
    model = RetinexFormer(n_feat=8)
    assert model.stage == 3 and len(model.body) == 3
    assert [len(layer[0].blocks) for layer in model.body[2].denoiser.encoder_layers] == [1, 1]
    assert len(model.body[2].denoiser.bottleneck.blocks) == 1


@pytest.mark.parametrize("cls", MODELS.values(), ids=MODELS)
@pytest.mark.parametrize("weights_key", ["params", "params_ema"])
def test_published_file_loads_strictly_and_reproduces_outputs(cls, weights_key, tmp_path):
    source = tiny(cls, seed=1)
    path = tmp_path / "published.pth"
    torch.save({weights_key: source.state_dict()}, path)
    target = cls(**TINY[cls]).eval()
    load_pretrained(target, path, strict=True)
    x = torch.rand(1, 3, 16, 20)
    with torch.no_grad():
        torch.testing.assert_close(target(x), source(x), rtol=0, atol=0)


@pytest.mark.parametrize("cls", MODELS.values(), ids=MODELS)
def test_a_file_of_another_configuration_is_refused(cls, tmp_path):
    path = tmp_path / "other.pth"
    torch.save({"params": cls(**{**TINY[cls], "num_blocks": [1, 1, 2]}).state_dict()}, path)
    with pytest.raises(CheckpointError, match="unexpected"):
        load_pretrained(cls(**TINY[cls]), path, strict=True)


@pytest.mark.parametrize("cls", MODELS.values(), ids=MODELS)
@pytest.mark.parametrize("size", [(21, 27), (5, 7), (32, 32)])
def test_any_size_keeps_shape(cls, size):
    model = tiny(cls)
    x = torch.rand(1, 3, *size)
    with torch.no_grad():
        out, light_up = model(x, return_illumination=True)
    assert out.shape == x.shape and light_up.shape == x.shape
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("cls", MODELS.values(), ids=MODELS)
def test_odd_size_is_the_reflect_padded_result_cropped(cls):
    model = tiny(cls)
    x = torch.rand(1, 3, 21, 27)
    padded = F.pad(x, (0, (-27) % SIZE_MULTIPLE, 0, (-21) % SIZE_MULTIPLE), mode="reflect")
    with torch.no_grad():
        torch.testing.assert_close(model(x), model(padded)[..., :21, :27])


@pytest.mark.parametrize("cls", MODELS.values(), ids=MODELS)
def test_zero_head_leaves_the_lit_photo_and_illumination_agrees(cls):
    # With the restorer's output convolution zeroed only its residual is left: the lit photo
    # rgb * (1 + M), M the estimator's map -- what illumination() and return_illumination give.
    model = tiny(cls, in_channels=5)
    restorer = getattr(model.body[0], model.body[0].restorer_name)
    with torch.no_grad():
        restorer.mapping.weight.zero_()
        x = torch.rand(2, 5, 12, 20)
        out, light_up = model(x, return_illumination=True)
        torch.testing.assert_close(light_up, model.illumination(x))
        torch.testing.assert_close(out, x[:, :3] * light_up)
    assert not torch.allclose(light_up, torch.ones_like(light_up))


@pytest.mark.parametrize("cls", MODELS.values(), ids=MODELS)
def test_extra_channels_reach_the_restorer_of_every_stage(cls):
    model = tiny(cls, in_channels=5, stage=2)
    x = torch.rand(1, 5, 12, 12)
    changed = x.clone()
    changed[:, 3:] = torch.rand(1, 2, 12, 12)
    with torch.no_grad():
        out = model(x)
        assert out.shape == (1, 3, 12, 12)
        assert not torch.allclose(out, model(changed))
        # the second stage alone sees the extra channels too
        first, _ = model.body[0](x)
        second, _ = model.body[1](torch.cat([first, x[:, 3:]], dim=1))
        torch.testing.assert_close(out, second)


@pytest.mark.parametrize("cls", MODELS.values(), ids=MODELS)
def test_every_parameter_gets_a_finite_gradient(cls):
    model = tiny(cls, stage=2).train()
    model(torch.rand(2, 3, 12, 16)).square().mean().backward()
    for name, parameter in model.named_parameters():
        assert parameter.grad is not None and torch.isfinite(parameter.grad).all(), name
        assert parameter.grad.abs().sum() > 0, name


@pytest.mark.parametrize("cls", MODELS.values(), ids=MODELS)
def test_bf16_autocast_is_finite_and_close(cls):
    model = tiny(cls)
    x = torch.rand(1, 3, 21, 18)
    with torch.no_grad():
        reference = model(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = model(x)
    assert torch.isfinite(out).all()
    assert (out.float() - reference).abs().max() < 0.1


@pytest.mark.parametrize("cls", MODELS.values(), ids=MODELS)
def test_grad_checkpoint_gives_the_same_gradients(cls):
    x = torch.rand(1, 3, 8, 12)
    grads = []
    for enabled in (False, True):
        model = tiny(cls).train()
        model.grad_checkpoint = enabled
        model(x).mean().backward()
        grads.append({name: p.grad for name, p in model.named_parameters()})
    for name, grad in grads[0].items():
        torch.testing.assert_close(grads[1][name], grad, msg=name)


@pytest.mark.parametrize("cls", MODELS.values(), ids=MODELS)
def test_bad_configurations_and_inputs_raise(cls):
    with pytest.raises(ValueError, match="divisible by 4"):
        cls(n_feat=6, stage=1)
    with pytest.raises(ValueError, match="out_channels=3"):
        cls(**TINY[cls], out_channels=1)
    with pytest.raises(ValueError, match="num_blocks needs 3"):
        cls(**{**TINY[cls], "num_blocks": [1, 1]})
    with pytest.raises(ValueError, match=r"\(N, 3, H, W\)"):
        cls(**TINY[cls])(torch.rand(1, 4, 8, 8))
