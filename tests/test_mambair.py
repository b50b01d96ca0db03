"""MambaIR and MambaIR-UNet: official parameter layout, loading, any size, gradients, bf16."""
import hashlib

import pytest
import torch
import torch.nn.functional as F

from models.mambair import MambaIR, MambaIRUNet
from utils.checkpoint import load_pretrained

COLOR_DN = dict(upscale=1, img_size=128, embed_dim=180, depths=[6] * 6, mlp_ratio=1.2, d_state=16,
                upsampler="", resi_connection="1conv")  # options/test/mambair/test_MambaIR_ColorDN_level*.yml
REAL_DN = dict(inp_channels=3, out_channels=3, dim=48, num_blocks=[4, 6, 6, 8], num_refinement_blocks=4,
               mlp_ratio=1.5, bias=False, dual_pixel_task=False)  # realDenoising/options/train_MambaIR_RealDN.yml
# sha256 of repr(sorted((key, shape) for the state_dict)) of the official modules (csguoh/MambaIR at
# 33d7b34: basicsr/archs/mambair_arch.py, realDenoising/basicsr/models/archs/mambairunet_arch.py),
# built with these configs (their mamba_ssm/timm imports stubbed).
OFFICIAL_LAYOUTS = {
    "MambaIR": (15_777_507, 922, "a882d0104ec70133e4ace43cd2aa74fe8114af11702619f28c441fcfaf23c39a"),
    "MambaIRUNet": (26_779_480, 1110, "35be0533f6acfff6875dfa36fa0b34e4af97684cc8e4f857d3ecd293d807ab6e"),
}
# The smallest widths whose channel attention (C // 30) is not empty.
TINY_MAMBAIR = dict(upscale=1, embed_dim=30, depths=[1, 1], mlp_ratio=1.2, d_state=4, drop_path_rate=0.0)
TINY_UNET = dict(dim=30, num_blocks=[1, 1, 1, 1], num_refinement_blocks=1, mlp_ratio=1.5)


def tiny(cls, **overrides):
    return cls(**{**(TINY_MAMBAIR if cls is MambaIR else TINY_UNET), **overrides})


@pytest.mark.parametrize("cls, config", [(MambaIR, COLOR_DN), (MambaIRUNet, REAL_DN)], ids=["MambaIR", "UNet"])
def test_catalog_configs_have_the_official_parameter_layout(cls, config):
    with torch.device("meta"):  # shapes only: no memory, no init time
        model = cls(**config)
    params, keys, digest = OFFICIAL_LAYOUTS[cls.__name__]
    layout = sorted((k, tuple(v.shape)) for k, v in model.state_dict().items())
    assert sum(p.numel() for p in model.parameters()) == params
    assert len(layout) == keys
    assert hashlib.sha256(repr(layout).encode()).hexdigest() == digest
    assert not [name for name, _ in model.named_buffers() if name in model.state_dict()]


def test_official_key_names_spot_check():
    with torch.device("meta"):
        shapes = {k: tuple(v.shape) for k, v in MambaIR(**COLOR_DN).state_dict().items()}
    block = "layers.5.residual_group.blocks.5."
    assert shapes[block + "self_attention.x_proj_weight"] == (4, 12 + 32, 216)
    assert shapes[block + "self_attention.A_logs"] == (864, 16)
    assert shapes[block + "conv_blk.cab.3.attention.1.weight"] == (6, 180, 1, 1)
    assert shapes["patch_embed.norm.weight"] == (180,) and shapes["conv_last.weight"] == (3, 180, 3, 3)


@pytest.mark.parametrize("weights_key", ["params", "params_ema"])
@pytest.mark.parametrize("cls", [MambaIR, MambaIRUNet])
def test_official_style_file_loads_strictly_and_reproduces_outputs(tmp_path, cls, weights_key):
    torch.manual_seed(0)
    source = tiny(cls).eval()
    with torch.no_grad():
        for parameter in source.parameters():
            parameter.add_(torch.randn_like(parameter) * 0.05)
    path = tmp_path / "official.pth"
    torch.save({weights_key: source.state_dict()}, path)
    target = tiny(cls).eval()
    load_pretrained(target, path, strict=True)
    x = torch.rand(1, 3, 8, 16)
    with torch.no_grad():
        torch.testing.assert_close(target(x), source(x), rtol=0, atol=0)


@pytest.mark.parametrize("cls", [MambaIR, MambaIRUNet])
@pytest.mark.parametrize("size", [(9, 13), (5, 17)])
def test_odd_sizes_keep_their_shape(cls, size):
    torch.manual_seed(0)
    model = tiny(cls).eval()
    x = torch.rand(1, 3, *size)
    with torch.no_grad():
        out = model(x)
    assert out.shape == x.shape and torch.isfinite(out).all()


def test_unet_pads_odd_sizes_and_crops_back():
    torch.manual_seed(0)
    model = tiny(MambaIRUNet).eval()
    x = torch.rand(1, 3, 11, 13)
    padded = F.pad(x, (0, 3, 0, 5), mode="reflect")
    with torch.no_grad():
        torch.testing.assert_close(model(x), model(padded)[..., :11, :13], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("cls, kwargs", [(MambaIR, dict(in_chans=6, out_chans=3)),
                                         (MambaIRUNet, dict(inp_channels=6, out_channels=3))])
def test_extra_input_channels_residual_adds_the_first_three(cls, kwargs):
    torch.manual_seed(0)
    model = tiny(cls, **kwargs).eval()
    last = model.conv_last if cls is MambaIR else model.output
    torch.nn.init.zeros_(last.weight)
    if last.bias is not None:
        torch.nn.init.zeros_(last.bias)
    x = torch.rand(1, 6, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(model(x), x[:, :3], rtol=0, atol=1e-6)


@pytest.mark.parametrize("cls", [MambaIR, MambaIRUNet])
def test_every_parameter_gets_a_finite_gradient(cls):
    torch.manual_seed(0)
    model = tiny(cls).train()
    size = 16 if cls is MambaIRUNet else 8  # the latent needs two steps for A to matter
    F.l1_loss(model(torch.rand(2, 3, size, size)), torch.rand(2, 3, size, size)).backward()
    for name, parameter in model.named_parameters():
        assert parameter.grad is not None and torch.isfinite(parameter.grad).all(), name
        # At width 30 the channel attention squeezes to one channel behind a ReLU, which a random
        # batch may leave at zero (no gradient that step); every other parameter must move.
        if ".attention." not in name:
            assert parameter.grad.abs().sum() > 0, name


@pytest.mark.parametrize("cls", [MambaIR, MambaIRUNet])
def test_bf16_autocast_training_step_is_finite(cls):
    torch.manual_seed(0)
    model = tiny(cls).train()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(torch.rand(1, 3, 8, 8))
    F.l1_loss(out.float(), torch.rand(1, 3, 8, 8)).backward()
    assert torch.isfinite(out.float()).all()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())


@pytest.mark.parametrize("cls", [MambaIR, MambaIRUNet])
def test_grad_checkpoint_gives_the_same_gradients(cls):
    x, target = torch.rand(1, 3, 8, 8), torch.rand(1, 3, 8, 8)
    grads = []
    for recompute in (False, True):
        torch.manual_seed(0)
        model = tiny(cls, grad_checkpoint=recompute).train()
        F.l1_loss(model(x), target).backward()
        grads.append([p.grad for p in model.parameters()])
    for plain, recomputed in zip(*grads):
        torch.testing.assert_close(recomputed, plain, rtol=1e-5, atol=1e-7)


def test_mambair_official_use_checkpoint_switches_recomputation_on():
    assert tiny(MambaIR, use_checkpoint=True).grad_checkpoint


def test_mambair_drop_path_is_stochastic_only_while_training():
    torch.manual_seed(0)
    model = tiny(MambaIR, drop_path_rate=0.5)
    x = torch.rand(4, 3, 8, 8)
    with torch.no_grad():
        assert not torch.equal(model.train()(x), model(x))
        torch.testing.assert_close(model.eval()(x), model(x), rtol=0, atol=0)


@pytest.mark.parametrize("kwargs, message", [
    (dict(upsampler="pixelshuffle", upscale=2), "not supported"),
    (dict(resi_connection="2conv"), "resi_connection"),
    (dict(in_chans=1, out_chans=3), "must be >= output channels"),
])
def test_mambair_bad_config_raises(kwargs, message):
    with pytest.raises(ValueError, match=message):
        tiny(MambaIR, **kwargs)


@pytest.mark.parametrize("cls, kwargs", [(MambaIR, dict(embed_dim=24)), (MambaIRUNet, dict(dim=16))])
def test_widths_below_the_channel_attention_squeeze_raise_one_clear_error(cls, kwargs):
    with pytest.raises(ValueError, match="at least 30"):
        tiny(cls, **kwargs)


def test_wrong_input_channels_raise():
    with pytest.raises(ValueError, match=r"\(N, 3, H, W\)"):
        tiny(MambaIRUNet)(torch.rand(1, 4, 8, 8))


def test_train_mamba_mambair_arch_trains_and_its_run_enhances(tiny_pairs, tmp_path):
    import numpy as np

    import train_mamba
    from utils.inference import load_enhancer

    out = tmp_path / "run"
    train_mamba.main(["--arch", "mambair", "--embed-dim", "30", "--depths", "1", "--mlp-ratio", "1",
                      "--steps", "1", "--crop", "32", "--batch-size", "1", "--val-every", "1",
                      "--lpips-weight", "0", "--data", str(tiny_pairs), "--workers", "0", "--out", str(out)])
    saved = torch.load(out / "last.pt", map_location="cpu", weights_only=False)
    assert saved["config"]["model"]["class"] == "models.mambair.MambaIR"
    photo = np.random.default_rng(0).random((21, 30, 3), dtype=np.float32)
    enhanced = load_enhancer(out, tile=16, overlap=4).enhance(photo)  # tiled, as for large photos
    assert enhanced.shape == photo.shape and np.isfinite(enhanced).all()
