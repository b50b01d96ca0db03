"""GainRestormer: bounded per-pixel gains (window region darkened, interior brightened), near identity at
the start, Restormer weights, and its checkpoint through train_production.py and enhance.py."""
import importlib.util
from pathlib import Path

import pytest
import torch

import enhance
from data.io import read_image
from models.gain import GainRestormer, window_region
from models.restormer import Restormer
from utils.checkpoint import build_model, model_spec

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


def test_window_region_ramp():
    luma = torch.tensor([0.0, 0.77, 0.81, 0.85, 0.89, 0.93, 1.0]).view(1, 1, 1, 7).expand(1, 3, 1, 7)
    assert window_region(luma).flatten().tolist() == pytest.approx([0, 0, 0.25, 0.5, 0.75, 1, 1], abs=1e-5)


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
