"""IlluminationConsistencyLoss on hand-made inputs: exact relighting costs nothing, the log-ratio
error is what the formula says, noise and steps across flat regions cost more than steps at edges."""
import math

import pytest
import torch

from losses.illumination import ILLUMINATION_EPS, IlluminationConsistencyLoss

EPS = ILLUMINATION_EPS


def grey(value, size=(8, 8)):
    return torch.full((1, 3, *size), float(value))


def test_exact_relighting_by_a_constant_gain_costs_nothing():
    loss = IlluminationConsistencyLoss()
    assert loss(grey(2.0), grey(0.4), grey(0.2)).item() == pytest.approx(0.0, abs=1e-7)


def test_fidelity_is_the_log_ratio_the_map_leaves_unexplained():
    loss = IlluminationConsistencyLoss(smoothness_weight=0.0)
    # no light-up at all: the whole gain 0.4 / 0.2 is unexplained
    expected = math.log((0.4 + EPS) / (0.2 + EPS))
    assert loss(grey(1.0), grey(0.4), grey(0.2)).item() == pytest.approx(expected, rel=1e-5)
    # a map that darkens a blown-out window to the target's level explains it
    assert loss(grey(0.5), grey(0.5), grey(1.0)).item() == pytest.approx(0.0, abs=1e-7)


def test_gain_is_weighted_by_the_input_colour():
    # A green-only input lit up only in red gains no luminance: the target's gain stays unexplained.
    inp = torch.zeros(1, 3, 4, 4)
    inp[:, 1] = 0.2
    target = 2 * inp
    red_gain = torch.ones(1, 3, 4, 4)
    red_gain[:, 0] = 2.0
    green_gain = torch.ones(1, 3, 4, 4)
    green_gain[:, 1] = 2.0
    loss = IlluminationConsistencyLoss(smoothness_weight=0.0)
    assert loss(green_gain, target, inp).item() == pytest.approx(0.0, abs=1e-7)
    assert loss(red_gain, target, inp).item() > 0.5


def test_a_noisy_map_costs_more_than_a_smooth_one():
    torch.manual_seed(0)
    inp, target = grey(0.2), grey(0.4)
    noisy = 2.0 * (1 + 0.2 * torch.randn(1, 1, 8, 8)).expand(1, 3, 8, 8)
    loss = IlluminationConsistencyLoss(smoothness_weight=1.0)
    assert loss(noisy, target, inp) > loss(grey(2.0), target, inp) + 0.1


def test_an_illumination_step_is_cheaper_at_an_input_edge():
    # A map stepping from gain 1 to gain 2 between columns 3 and 4, the target exactly relit by it.
    gain = torch.ones(1, 3, 8, 8)
    gain[..., 4:] = 2.0
    flat = grey(0.2)
    edged = grey(0.2)
    edged[..., 4:] = 0.6  # the input has its own edge where the light changes
    loss = IlluminationConsistencyLoss(smoothness_weight=1.0)
    at_edge = loss(gain, edged * gain, edged)
    in_flat = loss(gain, flat * gain, flat)
    assert at_edge < 0.2 * in_flat
    assert in_flat.item() > 0.01


def test_gradient_raises_the_map_where_the_target_is_brighter():
    light_up = grey(1.0).requires_grad_(True)
    IlluminationConsistencyLoss()(light_up, grey(0.4), grey(0.2)).backward()
    assert (light_up.grad < 0).all()


def test_untrained_negative_map_stays_finite_and_bf16_inputs_work():
    light_up = torch.full((1, 3, 8, 8), -3.0, requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        value = IlluminationConsistencyLoss()(light_up.bfloat16(), grey(0.4).bfloat16(), grey(0.2))
    value.backward()
    assert torch.isfinite(value) and value.dtype == torch.float32
    assert torch.isfinite(light_up.grad).all()


def test_shape_mismatch_and_bad_settings_raise():
    with pytest.raises(ValueError, match="must match the input"):
        IlluminationConsistencyLoss()(torch.ones(1, 1, 8, 8), grey(0.4), grey(0.2))
    with pytest.raises(ValueError, match="eps > 0"):
        IlluminationConsistencyLoss(eps=0)


def reference_illumination_loss(light_up, target, inp, smoothness_weight, edge_sharpness, eps):
    """The module docstring's formula, written out per luma plane."""
    def luma(x):
        return 0.2126 * x[:, 0] + 0.7152 * x[:, 1] + 0.0722 * x[:, 2]
    log_input = torch.log(luma(inp) + eps)
    gain = torch.log(luma(inp * light_up).clamp(min=0) + eps) - log_input
    edit = torch.log(luma(target) + eps) - log_input
    fidelity = (gain - edit).abs().mean()
    horizontal = ((gain[..., 1:] - gain[..., :-1]).abs()
                  * torch.exp(-edge_sharpness * (log_input[..., 1:] - log_input[..., :-1]).abs())).mean()
    vertical = ((gain[:, 1:] - gain[:, :-1]).abs()
                * torch.exp(-edge_sharpness * (log_input[:, 1:] - log_input[:, :-1]).abs())).mean()
    return fidelity + smoothness_weight * (horizontal + vertical) / 2


def test_known_value_of_the_formula_on_a_random_map_with_the_default_settings():
    generator = torch.Generator().manual_seed(0)
    inp = torch.rand(2, 3, 5, 7, generator=generator)
    inp[0, :, 0, 0] = 0.0  # a black pixel, where eps bounds the log
    target = torch.rand(2, 3, 5, 7, generator=generator)
    light_up = 0.5 + 2 * torch.rand(2, 3, 5, 7, generator=generator)
    expected = reference_illumination_loss(light_up, target, inp, 0.1, 10.0, ILLUMINATION_EPS)
    assert IlluminationConsistencyLoss()(light_up, target, inp).item() == pytest.approx(expected.item(), rel=1e-5)
    # the map is compared with the input's RGB only: a stacked network input (extra channels) gives the same
    stacked = torch.cat([inp, torch.rand(2, 2, 5, 7, generator=generator)], dim=1)
    assert IlluminationConsistencyLoss()(light_up, target, stacked).item() == pytest.approx(expected.item(), rel=1e-5)


def test_settings_at_their_bounds_are_accepted_and_a_negative_smoothness_weight_is_not():
    for edge_sharpness in (0.0, 0.5):
        IlluminationConsistencyLoss(edge_sharpness=edge_sharpness)
    with pytest.raises(ValueError, match="smoothness_weight >= 0"):
        IlluminationConsistencyLoss(smoothness_weight=-1.0)


def test_shape_refusal_names_the_map_and_the_input_rgb_shapes():
    stacked = torch.rand(1, 5, 8, 8)
    with pytest.raises(ValueError, match=r"^light-up map \(1, 1, 8, 8\) must match the input's RGB \(1, 3, 8, 8\)$"):
        IlluminationConsistencyLoss()(torch.ones(1, 1, 8, 8), grey(0.4), stacked)
