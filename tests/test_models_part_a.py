"""GainRestormer (bounded gains, also through train_production.py and enhance.py), PatchDiscriminator
(70x70 PatchGAN), and the saving/restoring of a second network's state (TrainingState extra_modules,
the adversarial script's --resume)."""
import importlib.util
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

import enhance
from data.io import read_image
from models.discriminator import PatchDiscriminator
from models.gain import GainRestormer, window_region
from models.restormer import Restormer
from utils.checkpoint import CheckpointError, build_model, model_spec
from utils.training import TrainingState, make_train_step

TINY = dict(dim=8, num_blocks=(1, 1, 1, 1), num_refinement_blocks=1, heads=(1, 1, 1, 1))
ROOT = Path(__file__).resolve().parents[1]


def load_script(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def photo(size=16):
    """Half blown-out window (luma 1), half interior with a gradient of dark to mid values."""
    image = torch.rand(2, 3, size, size, generator=torch.Generator().manual_seed(0)) * 0.6
    image[..., : size // 2] = 1.0
    return image


def saturate_logits(model, scale: float):
    """Blow up the output convolution so the gain logits sit far in the sigmoid's tails."""
    with torch.no_grad():
        model.output.weight.mul_(scale)


# --------------------------------------------------------------------------- GainRestormer

@pytest.mark.parametrize("scale", [1.0, 1e3, -1e3])
def test_gain_respects_its_bounds_on_every_pixel(scale):
    torch.manual_seed(0)
    model = GainRestormer(**TINY)
    saturate_logits(model, scale)
    x = photo()
    gain, out = model.gain(x), model(x)
    mask = window_region(x)
    low, high = mask * 0.3 + (1 - mask) * 1.0, mask * 1.0 + (1 - mask) * 3.0
    assert (gain >= low - 1e-6).all() and (gain <= high + 1e-6).all()
    window, interior = (mask == 1).expand_as(gain), (mask == 0).expand_as(gain)
    assert window.any() and interior.any()
    assert gain[window].min() >= 0.3 - 1e-6 and gain[window].max() <= 1.0 + 1e-6
    assert gain[interior].min() >= 1.0 - 1e-6 and gain[interior].max() <= 3.0 + 1e-6
    assert torch.allclose(out, (x * gain).clamp(0, 1))
    assert (out[window] <= x[window] + 1e-6).all() and (out[interior] >= x[interior] - 1e-6).all()


def test_gain_starts_near_identity_and_trains():
    model = GainRestormer(**TINY)
    with torch.no_grad():
        model.output.weight.zero_()  # zero logits
    gain = model.gain(photo())
    mask = window_region(photo()).expand_as(gain)
    assert gain[mask == 1].mean().item() == pytest.approx(0.3 + 0.7 * 0.95, abs=1e-3)
    assert gain[mask == 0].mean().item() == pytest.approx(1.0 + 2.0 * 0.05, abs=1e-3)
    model = GainRestormer(**TINY)
    (model(photo()) - 0.5).abs().mean().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())


def test_gain_model_loads_restormer_weights_and_rebuilds_from_its_spec():
    restormer = Restormer(**TINY)
    kwargs = dict(TINY, window_gain=[0.5, 1.0], interior_gain=[1.0, 2.0], threshold=0.9, softness=0.02)
    model = GainRestormer(**kwargs)
    model.load_state_dict(restormer.state_dict(), strict=True)
    rebuilt = build_model(model_spec(model, kwargs))
    rebuilt.load_state_dict(model.state_dict())
    assert type(rebuilt) is GainRestormer and rebuilt.window_gain == (0.5, 1.0) and rebuilt.threshold == 0.9
    assert torch.equal(rebuilt(photo()), model(photo()))


def test_gain_model_rejects_bad_ranges():
    with pytest.raises(ValueError, match="window_gain"):
        GainRestormer(**TINY, window_gain=(1.0, 0.3))
    with pytest.raises(ValueError, match="out_channels=3"):
        GainRestormer(**TINY, inp_channels=4, out_channels=4)


# --------------------------------------------------------------------------- PatchDiscriminator

def test_window_region_ramp():
    luma = torch.tensor([0.0, 0.77, 0.81, 0.85, 0.89, 0.93, 1.0]).view(1, 1, 1, 7).expand(1, 3, 1, 7)
    assert window_region(luma).flatten().tolist() == pytest.approx([0, 0, 0.25, 0.5, 0.75, 1, 1], abs=1e-5)


@pytest.mark.parametrize("norm", ["spectral", "instance"])
def test_patch_discriminator_shape(norm):
    discriminator = PatchDiscriminator(in_channels=6, base_channels=4, num_layers=3, norm=norm)
    assert discriminator(torch.rand(1, 6, 96, 96)).shape == (1, 1, 96 // 8 - 2, 96 // 8 - 2)
    assert discriminator(torch.rand(2, 6, 32, 40)).shape == (2, 1, 2, 3)
    assert discriminator(torch.rand(1, 6, 24, 24)).shape == (1, 1, 1, 1)
    with pytest.raises(ValueError, match="at least 24 pixels"):
        discriminator(torch.rand(1, 6, 16, 24))


def test_patch_discriminator_receptive_field_is_70():
    # spectral norm keeps each logit local (instance norm's statistics span the whole image)
    torch.manual_seed(0)
    discriminator = PatchDiscriminator(in_channels=6, base_channels=4, num_layers=3, norm="spectral")
    x = torch.rand(1, 6, 96, 96, requires_grad=True)
    discriminator(x)[0, 0, 5, 5].backward()
    support = x.grad.abs().sum(dim=(0, 1)) > 0
    rows, cols = support.any(dim=1).nonzero(), support.any(dim=0).nonzero()
    assert rows.max() - rows.min() + 1 == 70 and cols.max() - cols.min() + 1 == 70  # the 70x70 PatchGAN


@pytest.mark.parametrize("norm", ["spectral", "instance"])
def test_patch_discriminator_gradients_reach_every_parameter(norm):
    discriminator = PatchDiscriminator(base_channels=4, norm=norm)
    discriminator(torch.rand(2, 6, 32, 32)).mean().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in discriminator.parameters())
    with pytest.raises(ValueError, match="norm"):
        PatchDiscriminator(norm="batch")


def test_spectral_norm_bounds_the_layers():
    discriminator = PatchDiscriminator(base_channels=4, norm="spectral")
    for _ in range(20):  # power iterations run in training-mode forwards
        discriminator(torch.rand(1, 6, 32, 32))
    conv = discriminator.body[0]
    weight = conv.weight.detach().flatten(1)
    assert torch.linalg.matrix_norm(weight, ord=2).item() == pytest.approx(1.0, rel=0.05)


# --------------------------------------------------------------------------- second network's state

def _gan_pieces(seed):
    torch.manual_seed(seed)
    model, discriminator = Restormer(**TINY), PatchDiscriminator(base_channels=4)
    cpu = torch.device("cpu")
    args = SimpleNamespace(lr=1e-3, weight_decay=0.0, warmup=1, steps=10, amp="none", grad_clip=0.0, ema=0.0)
    disc_step = make_train_step(discriminator, args, cpu, betas=(0.5, 0.999))
    pieces = dict(discriminator=discriminator, disc_step=disc_step)
    state = TrainingState(model=model, train_step=make_train_step(model, args, cpu),
                          config={"model": model_spec(model, TINY)}, extra_modules=pieces)
    return state, pieces


def _disc_train_step(pieces):
    pieces["disc_step"](pieces["discriminator"](torch.rand(1, 6, 32, 32)).mean())


def test_training_state_saves_and_restores_extra_modules_exactly(tmp_path):
    state, pieces = _gan_pieces(0)
    _disc_train_step(pieces)
    state.save(tmp_path / "last.pt", step=3, extra={"best_psnr": 20.0})
    fresh, fresh_pieces = _gan_pieces(1)
    step, extra = fresh.resume(tmp_path)
    assert step == 3 and extra == {"best_psnr": 20.0}
    saved, restored = pieces["discriminator"].state_dict(), fresh_pieces["discriminator"].state_dict()
    assert saved.keys() == restored.keys() and all(torch.equal(saved[k], restored[k]) for k in saved)
    assert any(k.endswith("_u") for k in saved)  # spectral norm's power-iteration vectors too
    optimizer, fresh_optimizer = pieces["disc_step"].optimizer, fresh_pieces["disc_step"].optimizer
    moments = [s["exp_avg"] for s in optimizer.state_dict()["state"].values()]
    restored_moments = [s["exp_avg"] for s in fresh_optimizer.state_dict()["state"].values()]
    assert moments and all(torch.equal(a, b) for a, b in zip(moments, restored_moments))
    assert fresh_pieces["disc_step"].scheduler.last_epoch == pieces["disc_step"].scheduler.last_epoch == 1


def test_resume_without_the_extra_modules_state_is_refused(tmp_path):
    state, _ = _gan_pieces(0)
    plain = TrainingState(model=state.model, train_step=state.train_step, config=state.config)
    plain.save(tmp_path / "plain.pt", step=1)
    assert plain.resume(tmp_path / "plain.pt")[0] == 1  # checkpoints without extra modules still resume
    with pytest.raises(CheckpointError, match="no state for discriminator"):
        state.resume(tmp_path / "plain.pt")


def _leaves(state, path=""):
    """(path, value) for every tensor / number / string inside a nested state_dict."""
    if isinstance(state, dict):
        for key, value in state.items():
            yield from _leaves(value, f"{path}/{key}")
    elif isinstance(state, (list, tuple)):
        for index, value in enumerate(state):
            yield from _leaves(value, f"{path}/{index}")
    else:
        yield path, state


def test_adversarial_script_resumes_the_discriminator_exactly(tiny_pairs, tmp_path):
    module = load_script("train_restormer_512_adversarial")
    argv = ["--data", str(tiny_pairs), "--workers", "0", "--steps", "1", "--crop", "32", "--batch-size", "1",
            "--dim", "8", "--num-blocks", "1", "1", "1", "1", "--num-refinement-blocks", "1", "--heads", "1", "1",
            "1", "1", "--disc-channels", "4", "--style-weight", "0", "--num-samples", "0", "--out", str(tmp_path)]
    module.main(argv)
    saved = torch.load(tmp_path / "last.pt", map_location="cpu", weights_only=True)["extra"]["modules"]
    run = module.main(argv + ["--resume", str(tmp_path)])  # already at --steps: restores, trains nothing
    restored = {name: obj.state_dict() for name, obj in run.state.extra_modules.items()}
    assert "discriminator" in saved and set(restored) == set(saved)
    saved_leaves, restored_leaves = dict(_leaves(saved)), dict(_leaves(restored))
    assert saved_leaves.keys() == restored_leaves.keys()
    for path, value in saved_leaves.items():
        restored_value = restored_leaves[path]
        assert torch.equal(value, restored_value) if torch.is_tensor(value) else value == restored_value, path
    # what was saved is the trained discriminator's optimizer (Adam moments after one step), not a fresh one
    assert any(path.endswith("exp_avg") for path in saved_leaves)


def test_production_checkpoint_enhances_within_its_bounds(tiny_pairs, tmp_path):
    module = load_script("train_production")
    argv = ["--data", str(tiny_pairs), "--workers", "0", "--steps", "2", "--crop", "32", "--batch-size", "2",
            "--dim", "8", "--num-blocks", "1", "1", "1", "1", "--num-refinement-blocks", "1", "--heads", "1", "1",
            "1", "1", "--lr", "1e-2", "--warmup", "1", "--num-samples", "0", "--out", str(tmp_path / "run")]
    module.main(argv)
    photo = tiny_pairs / "val" / "input" / "000.png"
    written = enhance.main(["--checkpoint", str(tmp_path / "run"), "--input", str(photo), "--out",
                            str(tmp_path / "edited"), "--device", "cpu"])
    inp, out = read_image(photo), read_image(written[0])
    assert out.shape == inp.shape
    region = window_region(torch.from_numpy(inp).permute(2, 0, 1)[None])[0, 0].numpy()
    level = 1 / 255 + 1e-6  # 8-bit rounding of the written photo
    window, interior = region == 1, region == 0
    assert window.any() and interior.any()
    assert (out[window] <= inp[window] + level).all() and (out[window] >= 0.3 * inp[window] - level).all()
    assert (out[interior] >= inp[interior] - level).all() and (out[interior] <= 3 * inp[interior] + level).all()
