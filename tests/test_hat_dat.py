"""HAT and DAT: the published configurations' exact state dicts (names, shapes, dtypes, buffer values),
strict loading of official-style files, any input size, gradients, bf16, and the mask cache.

The fixtures tests/fixtures/{hat_srx4,dat_x4}_state_dict.txt list the state dict of the official
architectures (XPixelGroup/HAT, zhengchen1999/DAT) built from their published option files; the
checksums below are of the official buffers' values.
"""
from pathlib import Path

import pytest
import torch

from models.dat import DAT, DAT_X4, dat_masks
from models.hat import HAT, HAT_SRX4
from utils.checkpoint import CheckpointError, load_pretrained

FIXTURES = Path(__file__).parent / "fixtures"
TINY_HAT = dict(upscale=1, img_size=32, window_size=8, embed_dim=12, depths=[2], num_heads=[2], mlp_ratio=2,
                squeeze_factor=4, upsampler="pixelshuffle")
TINY_DAT = dict(upscale=1, img_size=16, split_size=[4, 8], depth=[2, 1], embed_dim=64, num_heads=[2, 2],
                expansion_factor=2)
TINY = {"hat": (HAT, TINY_HAT), "dat": (DAT, TINY_DAT)}


def tiny(name, **overrides):
    torch.manual_seed(0)
    cls, config = TINY[name]
    return cls(**{**config, **overrides})


def official_signature(name: str) -> dict:
    lines = (FIXTURES / f"{name}_state_dict.txt").read_text().splitlines()[1:]
    signature = {}
    for line in lines:
        key, shape, dtype = line.split()
        signature[key] = (() if shape == "-" else tuple(map(int, shape.split("x"))), getattr(torch, dtype))
    return signature


def signature(model) -> dict:
    return {key: (tuple(value.shape), value.dtype) for key, value in model.state_dict().items()}


def weighted_sum(tensor) -> float:
    return (tensor.double().flatten() * torch.arange(tensor.numel(), dtype=torch.float64)).sum().item()


@pytest.fixture(scope="module")
def published():
    torch.manual_seed(0)
    return {"hat": HAT(**HAT_SRX4), "dat": DAT(**DAT_X4)}


@pytest.mark.parametrize("name, fixture, count, count_x1", [
    ("hat", "hat_srx4", 20_772_507, 20_477_083), ("dat", "dat_x4", 14_802_051, 14_506_627)])
def test_published_config_matches_official_state_dict(published, name, fixture, count, count_x1):
    model = published[name]
    assert sum(p.numel() for p in model.parameters()) == count
    assert signature(model) == official_signature(fixture)
    config = HAT_SRX4 if name == "hat" else DAT_X4
    x1 = type(model)(**{**config, "upscale": 1})
    assert sum(p.numel() for p in x1.parameters()) == count_x1
    # the official Upsample(1) is empty: an x1 file is the x4 one without upsample.*
    assert signature(x1) == {k: v for k, v in official_signature(fixture).items() if not k.startswith("upsample.")}


def test_hat_index_buffers_equal_official_values(published):
    state = published["hat"].state_dict()
    assert weighted_sum(state["relative_position_index_SA"]) == 1207272652800.0
    assert weighted_sum(state["relative_position_index_OCA"]) == -2426005401600.0
    assert state["relative_position_index_OCA"].min() == -880  # the official index wraps to the table's end


def test_dat_buffers_equal_official_values(published):
    state = published["dat"].state_dict()
    expected = {"attns.0.rpe_biases": 2847600.0, "attns.1.rpe_biases": 9409680.0,
                "attns.0.relative_position_index": 1191897907200.0,
                "attns.1.relative_position_index": 1184645038080.0}
    for key, value in expected.items():
        assert weighted_sum(state[f"layers.0.blocks.0.attn.{key}"]) == value
    assert weighted_sum(state["layers.0.blocks.2.attn.attn_mask_0"]) == -19381024358400.0
    assert weighted_sum(state["layers.0.blocks.2.attn.attn_mask_1"]) == -23890740019200.0
    shifted = sorted(k.rsplit(".attn.", 1)[0] for k in state if k.endswith("attn_mask_0"))
    assert len(shifted) == 9 and "layers.1.blocks.0" in shifted and "layers.0.blocks.0" not in shifted


def test_hat_default_upsampler_returns_input_unchanged():
    model = HAT(img_size=16, window_size=8, embed_dim=12, depths=[1], num_heads=[2], squeeze_factor=4)
    x = torch.rand(1, 3, 16, 16)
    assert model.upsampler == "" and model.upscale == 2
    assert torch.equal(model(x), x)
    assert not any(k.startswith(("conv_last", "upsample")) for k in model.state_dict())


@pytest.mark.parametrize("name", ["hat", "dat"])
def test_params_ema_file_loads_strictly_and_reproduces_outputs(name, tmp_path):
    source = tiny(name, upscale=2).eval()
    path = tmp_path / "official.pth"
    torch.save({"params": {k: torch.zeros_like(v) for k, v in source.state_dict().items()},
                "params_ema": source.state_dict()}, path)
    torch.manual_seed(1)
    target = TINY[name][0](**{**TINY[name][1], "upscale": 2}).eval()
    assert load_pretrained(target, path, strict=True) == ([], [])
    x = torch.rand(1, 3, 20, 24)
    with torch.no_grad():
        assert torch.equal(target(x), source(x))
    with pytest.raises(CheckpointError, match="do not fit"):
        load_pretrained(tiny(name, upscale=1), path, strict=True)  # x2 file has upsample.*


@pytest.mark.parametrize("name", ["hat", "dat"])
@pytest.mark.parametrize("size", [(16, 16), (13, 21), (9, 20)])
@pytest.mark.parametrize("upscale", [1, 4])
def test_output_is_upscale_times_any_input_size(name, size, upscale):
    model = tiny(name, upscale=upscale).eval()
    x = torch.rand(1, 3, *size)
    with torch.no_grad():
        y = model(x)
    assert y.shape == (1, 3, size[0] * upscale, size[1] * upscale) and torch.isfinite(y).all()


def test_hat_odd_size_equals_reflect_padded_official_pipeline():
    model = tiny("hat").eval()
    x = torch.rand(1, 3, 19, 27)
    padded = torch.nn.functional.pad(x, (0, 5, 0, 5), mode="reflect")
    with torch.no_grad():
        assert torch.allclose(model(x), model(padded)[..., :19, :27], atol=1e-6)


def test_dat_crops_each_window_map_not_the_image():
    # DAT pads q/k/v inside the attention (as upstream), so 13x11 is not the 16x16 result cropped.
    model = tiny("dat").eval()
    x = torch.rand(1, 3, 13, 11)
    padded = torch.nn.functional.pad(x, (0, 5, 0, 3), mode="reflect")
    with torch.no_grad():
        assert not torch.allclose(model(x), model(padded)[..., :13, :11], atol=1e-4)


@pytest.mark.parametrize("name", ["hat", "dat"])
def test_every_parameter_gets_a_finite_nonzero_gradient(name):
    model = tiny(name, upscale=2, drop_path_rate=0.0).train()
    model(torch.rand(2, 3, 16, 24)).square().mean().backward()
    for key, parameter in model.named_parameters():
        assert parameter.grad is not None and torch.isfinite(parameter.grad).all(), key
        assert parameter.grad.abs().sum() > 0, key


@pytest.mark.parametrize("name", ["hat", "dat"])
def test_bf16_autocast_is_finite_forward_and_backward(name):
    model = tiny(name).train()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = model(torch.rand(2, 3, 16, 24))
    assert torch.isfinite(y.float()).all()
    y.float().mean().backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())


@pytest.mark.parametrize("name", ["hat", "dat"])
def test_use_checkpoint_gives_same_gradients(name):
    flag = "use_checkpoint" if name == "hat" else "use_chk"
    x = torch.rand(2, 3, 16, 24)
    grads = []
    for checkpointing in (False, True):
        model = tiny(name, drop_path_rate=0.0, **{flag: checkpointing}).train()
        model(x).mean().backward()
        grads.append([p.grad for p in model.parameters()])
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(*grads))


def count_builds(model):
    calls = []
    build = model._masks.build
    model._masks.build = lambda h, w: calls.append((h, w)) or build(h, w)
    return calls


@pytest.mark.parametrize("name", ["hat", "dat"])
def test_shift_masks_are_built_once_per_padded_size(name):
    model = tiny(name).eval()
    calls = count_builds(model)
    with torch.no_grad():
        for size in [(24, 24), (24, 24), (17, 19), (24, 24)]:
            model(torch.rand(1, 3, *size))
    assert calls == [(24, 24)]  # 17x19 pads to 24x24 (multiples of 8) and reuses its masks


def test_dat_uses_its_mask_buffers_at_img_size_and_cached_masks_elsewhere():
    model = tiny("dat").eval()
    calls = count_builds(model)
    with torch.no_grad():
        model(torch.rand(1, 3, 16, 16))
        model(torch.rand(1, 3, 13, 15))  # pads to 16: the buffers again
    assert calls == []
    buffers = [model.layers[1].blocks[0].attn.attn_mask_0, model.layers[1].blocks[0].attn.attn_mask_1]
    assert all(torch.equal(a, b) for a, b in zip(buffers, dat_masks([4, 8], [2, 4], 16, 16)))
    with torch.no_grad():
        model(torch.rand(1, 3, 24, 16))
    assert calls == [(24, 16)]


def test_bad_configs_raise_one_line_errors():
    with pytest.raises(ValueError, match="upsampler"):
        HAT(upsampler="nearest+conv")
    with pytest.raises(ValueError, match="multiple of both split_size"):
        DAT(img_size=20, split_size=[8, 16])
    with pytest.raises(ValueError, match="expects input of shape"):
        tiny("hat")(torch.rand(1, 4, 16, 16))


def test_enhance_tiles_at_multiples_of_the_window(tmp_path):
    from utils.checkpoint import model_spec, save_checkpoint
    from utils.inference import load_enhancer
    kwargs = {**TINY_HAT, "img_size": 64, "window_size": 16}
    model = HAT(**kwargs)
    path = tmp_path / "hat.pt"
    save_checkpoint(path, step=0, model=model, config={"model": model_spec(model, kwargs)})
    photo = torch.rand(40, 56, 3).numpy()
    enhanced = load_enhancer(path, tile=32, overlap=8).enhance(photo)
    assert enhanced.shape == photo.shape and (enhanced >= 0).all() and (enhanced <= 1).all()
    with pytest.raises(ValueError, match="multiple of 16 for HAT"):
        load_enhancer(path, tile=24, overlap=8)
