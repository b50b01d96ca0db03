"""Delta-aware, adaptive-zone, colour-direction, edge and SSIM losses: known values, adaptivity, and
finite gradients at the extremes and under fp16/bf16 autocast."""
import argparse

import numpy as np
import pytest
import torch

from losses.delta import DeltaAwareLoss, add_delta_args, change_mask, delta_loss_from_args
from losses.direction import ColorDirectionLoss
from losses.edge import EdgeLoss
from losses.structural import SSIMLoss
from losses.zones import AdaptiveZoneLoss, percentile_thresholds
from utils.metrics import ssim

EXTREMES = {
    "black": torch.zeros(1, 3, 16, 16),
    "white": torch.ones(1, 3, 16, 16),
    "red": torch.tensor([1.0, 0.0, 0.0]).view(1, 3, 1, 1).expand(1, 3, 16, 16).clone(),
    "blue": torch.tensor([0.0, 0.0, 1.0]).view(1, 3, 1, 1).expand(1, 3, 16, 16).clone(),
}
LOSSES = [DeltaAwareLoss(), AdaptiveZoneLoss(), ColorDirectionLoss(), EdgeLoss(), SSIMLoss()]


def half_changed_pair():
    """Input 0.5 everywhere; the target brightens the left half to 0.8 and keeps the right half."""
    inp = torch.full((1, 3, 8, 8), 0.5)
    target = inp.clone()
    target[..., :4] = 0.8
    return inp, target


# --------------------------------------------------------------------------- delta-aware

def test_delta_weights_are_larger_where_input_and_target_differ():
    inp, target = half_changed_pair()
    loss = DeltaAwareLoss(fix_weight=3.0, preserve_weight=1.0)
    mask = change_mask(inp, target)
    assert mask[..., :4].min() > 0.99 and mask[..., 4:].max() < 0.01
    weights = loss.pixel_weights(inp, target)
    assert weights[..., :4].min() > 2.9 and weights[..., 4:].max() < 1.1

    pred = target.clone().requires_grad_(True)
    with torch.no_grad():
        pred += 0.1
    loss(pred, target, inp).backward()
    grad = pred.grad.abs()
    assert grad[..., :4].min() > 2.5 * grad[..., 4:].max()


def test_delta_known_values():
    inp, target = half_changed_pair()
    loss = DeltaAwareLoss(fix_weight=3.0, preserve_weight=1.0)
    # a uniform error e gives e, whatever the weights
    assert loss(target + 0.1, target, inp).item() == pytest.approx(0.1, rel=1e-5)
    error_in_fixed = target.clone()
    error_in_fixed[..., :4] += 0.1
    error_in_preserved = target.clone()
    error_in_preserved[..., 4:] += 0.1
    preserve_weight = 1.0 + 2.0 * torch.sigmoid(torch.tensor(-5.0)).item()  # delta 0: mask sigmoid(-0.05 / 0.01)
    assert loss(error_in_fixed, target, inp).item() == pytest.approx(0.3 / (3.0 + preserve_weight), rel=1e-4)
    assert loss(error_in_preserved, target, inp).item() == pytest.approx(
        0.1 * preserve_weight / (3.0 + preserve_weight), rel=1e-4)


def test_delta_counts_a_single_channel_colour_change():
    inp = torch.full((1, 3, 4, 4), 0.5)
    target = inp.clone()
    target[:, 2] = 0.6  # a colour correction on blue only
    assert change_mask(inp, target).min() > 0.99


def test_delta_rejects_a_stacked_network_input():
    inp, target = half_changed_pair()
    stacked = torch.cat([inp, inp[:, :1]], dim=1)
    with pytest.raises(ValueError, match=r"inp\[:, :3\]"):
        DeltaAwareLoss()(target, target, stacked)
    with pytest.raises(ValueError, match="fix_weight"):
        DeltaAwareLoss(fix_weight=0.0, preserve_weight=0.0)


def test_delta_flags_build_the_loss():
    parser = argparse.ArgumentParser()
    add_delta_args(parser)
    loss = delta_loss_from_args(parser.parse_args(["--fix-weight", "5", "--delta-threshold", "0.1"]))
    assert (loss.fix_weight, loss.preserve_weight, loss.threshold, loss.softness) == (5.0, 1.0, 0.1, 0.01)


# --------------------------------------------------------------------------- adaptive zones

def test_percentile_thresholds_match_numpy():
    luma = torch.rand(2, 1, 20, 30, generator=torch.Generator().manual_seed(0))
    thresholds = percentile_thresholds(luma, torch.tensor([0.25, 0.9]))
    for image in range(2):
        expected = np.percentile(luma[image].numpy(), [25, 90])
        assert thresholds[image].tolist() == pytest.approx(expected.tolist(), abs=1e-6)


def test_percentile_thresholds_of_a_large_image_use_a_close_subsample():
    luma = torch.rand(1, 1, 600, 600, generator=torch.Generator().manual_seed(1))
    thresholds = percentile_thresholds(luma, torch.tensor([0.25, 0.9]))
    assert thresholds[0].tolist() == pytest.approx([0.25, 0.9], abs=0.01)


def test_zone_thresholds_adapt_to_exposure():
    # A luma ramp shot dark and bright: fixed thresholds would call the dark shot all shadow; the
    # percentile zones cover the same share of each.
    ramp = torch.linspace(0, 1, 64).view(1, 1, 1, 64).expand(1, 3, 64, 64)
    loss = AdaptiveZoneLoss(shadow_percentile=25, highlight_percentile=90, softness=0.002)
    for exposure in (0.3, 1.0):
        zones = loss.zones(ramp * exposure)
        fractions = zones.mean(dim=(0, 2, 3))
        assert fractions.tolist() == pytest.approx([0.25, 0.65, 0.10], abs=0.03)
        assert torch.allclose(zones.sum(dim=1), torch.ones(1, 64, 64), atol=1e-6)
    dark, bright = (percentile_thresholds(ramp[:, :1] * e, loss.quantiles) for e in (0.3, 1.0))
    assert dark[0].tolist() == pytest.approx((0.3 * bright[0]).tolist(), rel=1e-4)


def test_zone_loss_known_values():
    ramp = torch.linspace(0, 1, 64).view(1, 1, 1, 64).expand(1, 3, 64, 64)
    loss = AdaptiveZoneLoss(shadow_weight=1.5, midtone_weight=1.0, highlight_weight=2.0)
    target = torch.full_like(ramp, 0.5)
    # a uniform error e is e in every zone: L = e (1.5 + 1 + 2)
    assert loss(target + 0.1, target, ramp).item() == pytest.approx(0.45, rel=1e-4)
    highlights_only = target.clone()
    highlights_only[..., 60:] += 0.1  # the brightest 4 of 64 columns, inside the top 10 %
    value = loss(highlights_only, target, ramp).item()
    assert 0.1 < value < 0.2  # mostly the highlight term: 2 x (error share of the highlight zone)


def test_zone_loss_validates_percentiles():
    with pytest.raises(ValueError, match="shadow_percentile < highlight_percentile"):
        AdaptiveZoneLoss(shadow_percentile=90, highlight_percentile=25)


# --------------------------------------------------------------------------- colour direction

def test_color_direction_known_values():
    inp = torch.full((1, 3, 4, 4), 0.4)
    target = inp + torch.tensor([0.2, 0.1, -0.1]).view(1, 3, 1, 1)
    loss = ColorDirectionLoss()
    assert loss(target, target, inp).item() == pytest.approx(0.0, abs=1e-3)
    assert loss(inp + 0.5 * (target - inp), target, inp).item() == pytest.approx(0.0, abs=1e-3)  # too little, right way
    assert loss(inp, target, inp).item() == pytest.approx(1.0, abs=1e-6)  # no change
    assert loss(inp - (target - inp), target, inp).item() == pytest.approx(2.0, abs=1e-3)  # wrong way
    assert loss(target, inp, inp).item() == pytest.approx(0.0, abs=1e-6)  # the edit changes nothing
    # a blue cast where the editor only brightened: 1 - cos of the angle between the changes
    brightened = inp + 0.2
    cast = inp + torch.tensor([0.1, 0.1, 0.3]).view(1, 3, 1, 1)
    expected = 1.0 - 0.5 / (np.sqrt(0.11) * np.sqrt(3.0))
    assert loss(cast, brightened, inp).item() == pytest.approx(expected, abs=1e-3)


# --------------------------------------------------------------------------- edge, SSIM

def test_edge_loss_known_values():
    target = torch.rand(1, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    loss = EdgeLoss()
    assert loss(target + 0.3, target).item() == pytest.approx(0.0, abs=1e-6)  # constant offset: no edge error
    ramp = 0.05 * torch.arange(8.0).view(1, 1, 1, 8).expand(1, 3, 8, 8)
    # interior columns see the slope 0.05, the two replicate-padded border columns half of it
    assert loss(target + ramp, target).item() == pytest.approx(0.05 * 7 / 8, rel=1e-5)
    assert loss(target + ramp.transpose(-1, -2), target).item() == pytest.approx(0.05 * 7 / 8, rel=1e-5)


def test_ssim_loss_is_one_minus_ssim():
    generator = torch.Generator().manual_seed(0)
    pred, target = torch.rand(2, 3, 16, 16, generator=generator), torch.rand(2, 3, 16, 16, generator=generator)
    assert SSIMLoss()(pred, target).item() == pytest.approx(1.0 - ssim(pred, target).item(), abs=1e-6)
    assert SSIMLoss()(target, target).item() == pytest.approx(0.0, abs=1e-6)


# --------------------------------------------------------------------------- numerical safety

@pytest.mark.parametrize("name", list(EXTREMES))
@pytest.mark.parametrize("loss", LOSSES, ids=lambda l: type(l).__name__)
@pytest.mark.parametrize("target_kind", ["random", "same"])
def test_gradients_finite_at_extremes(loss, name, target_kind):
    pred = EXTREMES[name].clone().requires_grad_(True)
    target = torch.rand_like(pred) if target_kind == "random" else EXTREMES[name]
    value = loss(pred, target, EXTREMES[name])
    value.backward()
    assert torch.isfinite(value) and torch.isfinite(pred.grad).all()


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("loss", LOSSES, ids=lambda l: type(l).__name__)
def test_finite_fp32_under_autocast(loss, dtype):
    generator = torch.Generator().manual_seed(0)
    pred = torch.rand(2, 3, 16, 16, generator=generator).requires_grad_(True)
    inp = torch.rand(2, 3, 16, 16, generator=generator)
    inp[..., :4, :4] = 1.0
    target = torch.rand(2, 3, 16, 16, generator=generator)
    with torch.autocast("cpu", dtype=dtype):
        value = loss(pred.to(dtype), target, inp)  # a half-precision model output
    value.backward()
    assert value.dtype == torch.float32 and torch.isfinite(value) and torch.isfinite(pred.grad).all()
    assert value.item() == pytest.approx(loss(pred.detach(), target, inp).item(), rel=2e-2)
