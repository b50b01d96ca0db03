"""The delta-aware loss: weights where input and target differ, known values, and its flags."""
import argparse
import re

import pytest
import torch

from losses.delta import DeltaAwareLoss, add_delta_args, change_mask, delta_loss_from_args


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


def test_delta_flags_default_to_the_catalog_values_and_every_flag_reaches_the_loss_as_a_float():
    parser = argparse.ArgumentParser()
    add_delta_args(parser)
    default = delta_loss_from_args(parser.parse_args([]))
    assert (default.fix_weight, default.preserve_weight, default.threshold, default.softness) == (3.0, 1.0, 0.05, 0.01)
    given = delta_loss_from_args(parser.parse_args(["--fix-weight", "4", "--preserve-weight", "0.5",
                                                    "--delta-threshold", "0.2", "--delta-softness", "0.03"]))
    values = (given.fix_weight, given.preserve_weight, given.threshold, given.softness)
    assert values == (4.0, 0.5, 0.2, 0.03) and all(type(value) is float for value in values)


def test_delta_refusal_names_the_expected_and_the_given_input_shapes():
    inp, target = half_changed_pair()
    hint = " (models with extra input channels: pass inp[:, :3])"
    for given, shown in ((None, "None"), (torch.cat([inp, inp[:, :1]], dim=1), "(1, 4, 8, 8)")):
        message = f"DeltaAwareLoss needs the as-shot RGB input with the target's shape (1, 3, 8, 8), got {shown}{hint}"
        with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
            DeltaAwareLoss()(target, target, given)


def test_delta_is_the_plain_mean_error_when_the_weights_sum_below_one():
    # one unchanged pixel of weight 0.2: L = sum(w e) / (C sum(w)) = mean e
    inp = torch.full((1, 3, 1, 1), 0.5)
    pred = inp + torch.tensor([0.1, 0.2, 0.3]).view(1, 3, 1, 1)
    assert DeltaAwareLoss(fix_weight=0.3, preserve_weight=0.2)(pred, inp, inp).item() == pytest.approx(0.2, rel=1e-5)


def test_delta_pixel_weights_use_the_given_softness():
    inp, target = half_changed_pair()
    weights = DeltaAwareLoss(fix_weight=3.0, preserve_weight=1.0, softness=0.1).pixel_weights(inp, target)
    # unchanged pixels: delta 0, mask sigmoid((0 - 0.05) / 0.1)
    expected = 1.0 + 2.0 * torch.sigmoid(torch.tensor(-0.5)).item()
    assert weights[..., 4:].mean().item() == pytest.approx(expected, rel=1e-5)


def test_delta_takes_either_weight_zero_but_not_a_negative_one_nor_a_zero_softness():
    for fix_weight, preserve_weight in ((0.0, 1.0), (1.0, 0.0), (1.0, 1.0)):
        DeltaAwareLoss(fix_weight=fix_weight, preserve_weight=preserve_weight)
    for fix_weight, preserve_weight in ((-1.0, 1.0), (1.0, -1.0)):
        with pytest.raises(ValueError, match="fix_weight, preserve_weight >= 0"):
            DeltaAwareLoss(fix_weight=fix_weight, preserve_weight=preserve_weight)
    with pytest.raises(ValueError, match="^DeltaAwareLoss softness must be > 0, got 0.0$"):
        DeltaAwareLoss(softness=0.0)


@pytest.mark.parametrize("fix_weight, preserve_weight", [(-1.0, 2.0), (2.0, -1.0)])
def test_delta_aware_loss_rejects_one_negative_weight(fix_weight, preserve_weight):
    with pytest.raises(ValueError, match=f"got {fix_weight}, {preserve_weight}$"):
        DeltaAwareLoss(fix_weight=fix_weight, preserve_weight=preserve_weight)
