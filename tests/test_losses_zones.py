"""Tone-zone losses: luminance attention maps, fixed HDR zones and adaptive (percentile) zones: partitions,
thresholds and known values."""
import numpy as np
import pytest
import torch

from losses.luminance_attention import ZONE_CENTRES, LuminanceAttentionLoss, luminance_attention_maps
from losses.zone_aware import ZoneAwareLoss, hdr_zone_masks
from losses.zones import AdaptiveZoneLoss, exposure_zones, percentile_thresholds


# --------------------------------------------------------------------------- zones

def test_luminance_attention_maps_are_a_smooth_partition():
    luma = torch.linspace(0, 1, 11).view(1, 1, 1, 11).expand(1, 3, 1, 11)
    maps = luminance_attention_maps(luma)
    assert maps.sum(dim=1).flatten().tolist() == pytest.approx([1.0] * 11)
    assert maps[0, :, 0, 0].argmax() == 0 and maps[0, :, 0, 5].argmax() == 1 and maps[0, :, 0, 10].argmax() == 2
    # no threshold: memberships change by small steps between neighbouring luma values
    assert (maps[..., 1:] - maps[..., :-1]).abs().max() < 0.35


def test_luminance_attention_loss_known_values():
    inp = torch.zeros(1, 3, 8, 8)
    inp[..., :4] = 1.0  # left half blown out
    target = torch.rand(1, 3, 8, 8)
    loss = LuminanceAttentionLoss(shadow_weight=1.5, midtone_weight=1.0, highlight_weight=2.0)
    assert loss(target + 0.1, target, inp).item() == pytest.approx(0.1 * 4.5, rel=1e-4)
    error_in_window, error_in_shadow = target.clone(), target.clone()
    error_in_window[..., :4] += 0.1
    error_in_shadow[..., 4:] += 0.1
    assert loss(error_in_window, target, inp) > loss(error_in_shadow, target, inp)


def gaussian_memberships(luma, width):
    """softmax_k(-(luma - c_k)^2 / (2 width^2)) of one luma value, in numpy."""
    logits = -(luma - np.array(ZONE_CENTRES)) ** 2 / (2 * width ** 2)
    return np.exp(logits) / np.exp(logits).sum()


def test_luminance_attention_maps_are_normalised_gaussians_of_the_luma():
    luma = torch.tensor([0.5, 0.75, 1.0, 0.6]).view(1, 1, 1, 4).expand(1, 3, 1, 4)
    maps = luminance_attention_maps(luma)[0, :, 0]
    # the docstring's figures: luma 0.5 is 92 % midtone, 0.75 split evenly, 1 is 96 % highlight
    assert maps[1, 0].item() == pytest.approx(0.919, abs=1e-3)
    assert maps[1, 1].item() == pytest.approx(maps[2, 1].item(), abs=1e-6)
    assert maps[2, 2].item() == pytest.approx(0.958, abs=1e-3)
    for index, value in enumerate((0.5, 0.75, 1.0, 0.6)):
        assert maps[:, index].tolist() == pytest.approx(gaussian_memberships(value, 0.2).tolist(), abs=1e-6)
    narrow = luminance_attention_maps(luma, width=0.1)[0, :, 0, 3]
    assert narrow.tolist() == pytest.approx(gaussian_memberships(0.6, 0.1).tolist(), abs=1e-6)


def test_luminance_attention_maps_follow_the_inputs_dtype_and_device():
    centres = torch.tensor(ZONE_CENTRES, dtype=torch.float64)
    assert luminance_attention_maps(torch.rand(1, 3, 2, 2), centres=centres).dtype == torch.float32
    # the meta device stands in for CUDA: the default centres are built where the input is
    assert luminance_attention_maps(torch.zeros(1, 3, 2, 2, device="meta")).device.type == "meta"


def test_luminance_attention_loss_divides_each_zone_by_at_least_one_pixel_over_the_batch():
    # two one-pixel photos: no zone adds up to a pixel, so each zone's error is weighted by its
    # memberships (the one-pixel floor); the error is averaged over the colour channels
    inp = torch.tensor([0.0, 1.0]).view(2, 1, 1, 1).expand(2, 3, 1, 1)
    target = torch.full((2, 3, 1, 1), 0.5)
    pred = target.clone()
    pred[0, 0] += 0.3
    pred[1, 2] -= 0.6
    loss = LuminanceAttentionLoss(shadow_weight=1.5, midtone_weight=1.0, highlight_weight=2.0, width=0.3)
    memberships = [gaussian_memberships(0.0, 0.3), gaussian_memberships(1.0, 0.3)]
    assert max(memberships[0] + memberships[1]) < 1.0
    zone_errors = 0.1 * memberships[0] + 0.2 * memberships[1]
    expected = float(np.dot([1.5, 1.0, 2.0], zone_errors))
    assert loss(pred, target, inp).item() == pytest.approx(expected, rel=1e-5)


def test_luminance_attention_loss_rejects_a_width_of_zero_and_saves_no_state():
    with pytest.raises(ValueError, match="^LuminanceAttentionLoss width must be > 0, got 0$"):
        LuminanceAttentionLoss(width=0)
    # its zone centres and weights come from the constructor: a checkpoint carries none of them
    assert LuminanceAttentionLoss().state_dict() == {}


def test_zone_aware_masks_and_known_value():
    inp = torch.cat([torch.full((1, 3, 4, 4), 0.05), torch.full((1, 3, 4, 4), 0.5), torch.ones(1, 3, 4, 4)], dim=3)
    masks = hdr_zone_masks(inp)
    assert masks.sum(dim=1).flatten().tolist() == pytest.approx([1.0] * 48)
    assert masks[0, 1, :, :4].min() > 0.99 and masks[0, 2, :, 4:8].min() > 0.99 and masks[0, 0, :, 8:].min() > 0.97
    target = torch.rand(1, 3, 4, 12) * 0.8
    loss = ZoneAwareLoss(window_weight=2.0, shadow_weight=1.5, midtone_weight=1.0, brightness_weight=1.0)
    # a uniform shift e: each zone's L1 is e and each zone's mean luma moves by e
    assert loss(target + 0.1, target, inp).item() == pytest.approx(4.5 * (0.1 + 0.1), rel=1e-4)
    # noise with no net brightness change costs only its L1
    noise = torch.ones(1, 3, 4, 12) * 0.1
    noise[..., ::2, :] *= -1
    assert loss(target + noise, target, inp).item() == pytest.approx(4.5 * 0.1, rel=1e-3)
    with pytest.raises(ValueError, match="shadow_threshold"):
        ZoneAwareLoss(shadow_threshold=0.9)


def test_hdr_zone_masks_use_their_thresholds_and_softness():
    # luma 0.5 between a shadow threshold of 0.4 and a window threshold of 0.6, softness 0.1
    masks = hdr_zone_masks(torch.full((1, 3, 1, 1), 0.5), window_threshold=0.6, shadow_threshold=0.4,
                           softness=0.1).flatten()
    window = 1.0 / (1.0 + np.exp(1.0))  # sigmoid(-1)
    shadow = window * (1.0 - window)  # sigmoid(-1) of the rest
    assert masks.tolist() == pytest.approx([window, shadow, 1.0 - window - shadow], abs=1e-6)


@pytest.mark.parametrize("shadow_threshold, window_threshold", [(0.0, 0.85), (0.5, 0.5), (0.25, 1.0)])
def test_zone_aware_loss_rejects_thresholds_out_of_order(shadow_threshold, window_threshold):
    message = (f"^ZoneAwareLoss needs 0 < shadow_threshold < window_threshold < 1, "
               f"got {shadow_threshold} and {window_threshold}$")
    with pytest.raises(ValueError, match=message):
        ZoneAwareLoss(shadow_threshold=shadow_threshold, window_threshold=window_threshold)


def test_zone_aware_loss_rejects_a_softness_of_zero_and_saves_no_state():
    with pytest.raises(ValueError, match="^ZoneAwareLoss softness must be > 0, got 0$"):
        ZoneAwareLoss(softness=0)
    assert ZoneAwareLoss().state_dict() == {}


def test_zone_aware_loss_follows_its_formula_on_a_batch_with_zones_under_a_pixel():
    # two 1 x 2 photos: every zone covers less than 2 pixels (the floor of one pixel matters), errors
    # differ per channel, pixel and image
    inp = torch.tensor([[0.1, 0.5], [0.9, 0.3]]).view(2, 1, 1, 2).expand(2, 3, 1, 2)
    generator = torch.Generator().manual_seed(0)
    target, pred = torch.rand(2, 3, 1, 2, generator=generator), torch.rand(2, 3, 1, 2, generator=generator)
    weights, beta, thresholds = (2.0, 1.5, 0.5), 0.7, dict(window_threshold=0.8, shadow_threshold=0.2, softness=0.1)
    loss = ZoneAwareLoss(*weights, brightness_weight=beta, **thresholds)
    masks = hdr_zone_masks(inp, **thresholds)
    error = (pred - target).abs().mean(dim=1)
    luma = {name: 0.2126 * x[:, 0] + 0.7152 * x[:, 1] + 0.0722 * x[:, 2]
            for name, x in (("pred", pred), ("target", target))}
    expected = 0.0
    for zone, weight in enumerate(weights):
        mask = masks[:, zone]
        zone_error = (mask * error).sum() / max(mask.sum().item(), 1.0)
        brightness = [abs(((mask[n] * luma["pred"][n]).sum() - (mask[n] * luma["target"][n]).sum()).item())
                      / max(mask[n].sum().item(), 1.0) for n in range(2)]
        expected += weight * (zone_error.item() + beta * sum(brightness) / 2)
    assert loss(pred, target, inp).item() == pytest.approx(expected, rel=1e-5)


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


def test_percentile_thresholds_of_a_large_image_sample_every_sth_row_and_column():
    # 600 x 600 pixels: s = ceil(sqrt(360000 / 65536)) = 3, so only rows and columns 0, 3, 6, ... count
    luma = torch.zeros(1, 1, 600, 600)
    luma[:, :, ::3, ::3] = 1.0
    assert percentile_thresholds(luma, torch.tensor([0.25, 0.9]))[0].tolist() == [1.0, 1.0]


def test_percentile_thresholds_take_quantiles_of_any_float_dtype():
    luma = torch.rand(2, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    single = percentile_thresholds(luma, torch.tensor([0.25, 0.9]))
    double = percentile_thresholds(luma, torch.tensor([0.25, 0.9], dtype=torch.float64))
    assert double.dtype == torch.float32 and torch.equal(single, double)


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


def test_exposure_zones_stay_a_partition_within_0_1_where_the_thresholds_meet():
    flat = torch.full((1, 3, 4, 4), 0.5)  # both thresholds at the image's one luma
    masks = exposure_zones(flat, torch.tensor([0.25, 0.9]))
    assert masks.min() >= 0 and masks.max() <= 1 and torch.allclose(masks.sum(dim=1), torch.ones(1, 4, 4))
    assert masks[:, 2].max().item() == pytest.approx(0.25)  # sigmoid(0) x (1 - sigmoid(0))


def test_zone_loss_is_the_weighted_per_zone_mean_error_on_a_tiny_image():
    # a 2x2 image: every zone's mask sums to less than 2 pixels, the floor at 1 pixel decides
    generator = torch.Generator().manual_seed(0)
    inp, pred, target = (torch.rand(1, 3, 2, 2, generator=generator) for _ in range(3))
    loss = AdaptiveZoneLoss(softness=0.2, shadow_weight=1.5, midtone_weight=1.0, highlight_weight=2.0)
    masks = exposure_zones(inp, torch.tensor([0.25, 0.9]), softness=0.2)
    error = (pred - target).abs().mean(dim=1)  # per pixel, over the channels
    expected = sum(weight * (masks[0, z] * error[0]).sum() / max(masks[0, z].sum().item(), 1.0)
                   for z, weight in enumerate((1.5, 1.0, 2.0)))
    assert loss(pred, target, inp).item() == pytest.approx(expected.item(), rel=1e-5)


def test_zone_loss_takes_percentiles_strictly_inside_0_100_and_a_positive_softness():
    AdaptiveZoneLoss(shadow_percentile=0.5, highlight_percentile=99.5)
    message = "^AdaptiveZoneLoss needs 0 < shadow_percentile < highlight_percentile < 100, got {} and {}$"
    for shadow, highlight in ((0, 90), (50, 50), (25, 100)):
        with pytest.raises(ValueError, match=message.format(shadow, highlight)):
            AdaptiveZoneLoss(shadow_percentile=shadow, highlight_percentile=highlight)
    with pytest.raises(ValueError, match="^AdaptiveZoneLoss softness must be > 0, got 0$"):
        AdaptiveZoneLoss(softness=0)


def test_zone_loss_saves_no_state():
    # its thresholds and weights come from the constructor: a checkpoint of a run carries none of them
    assert AdaptiveZoneLoss().state_dict() == {}
