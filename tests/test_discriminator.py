"""PatchDiscriminator (70x70 PatchGAN) and the saving/restoring of its state beside the model
(TrainingState extra_modules, the adversarial script's --resume)."""
import importlib.util
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from models.discriminator import PatchDiscriminator
from models.restormer import Restormer
from utils.checkpoint import CheckpointError, model_spec
from utils.training import TrainingState, make_train_step

TINY = dict(dim=8, num_blocks=(1, 1, 1, 1), num_refinement_blocks=1, heads=(1, 1, 1, 1))
ROOT = Path(__file__).resolve().parents[1]


def load_script(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# --------------------------------------------------------------------------- PatchDiscriminator

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
