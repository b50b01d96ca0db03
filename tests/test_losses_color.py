"""Colour losses and colour spaces: LAB and delta E against scikit-image, histogram (earth mover's
distance), multi-scale colour, colour consistency, bright-region and colour-direction losses: known values."""
import numpy as np
import pytest
import torch
from skimage.color import rgb2lab

from losses.bright_color import CHROMA_EPS, BrightChromaLoss, BrightHistogramLoss, BrightHueLoss, BrightRGBLoss
from losses.color_angle import ANGLE_EPS, ColorConsistencyLoss
from losses.colorspace import delta_e76, rgb_to_hsv, rgb_to_lab, srgb_to_linear
from losses.direction import ColorDirectionLoss
from losses.histogram import HistogramLoss, soft_histogram
from losses.lab import DeltaELoss, MultiScaleColorLoss
from tests.conftest import constant


EXTREMES = {
    "black": constant([0.0, 0.0, 0.0]),
    "white": constant([1.0, 1.0, 1.0]),
    "red": constant([1.0, 0.0, 0.0]),
    "blue": constant([0.0, 0.0, 1.0]),
}


# --------------------------------------------------------------------------- colour spaces

def test_rgb_to_lab_matches_skimage():
    rgb = torch.rand(1, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    special = [[0, 0, 0], [1, 1, 1], [1, 0, 0], [0, 1, 0], [0, 0, 1], [0.04045, 0.04, 0.05], [0.01, 0.002, 0.0]]
    for index, colour in enumerate(special):
        rgb[0, :, 0, index] = torch.tensor(colour)
    reference = rgb2lab(rgb[0].permute(1, 2, 0).double().numpy())
    ours = rgb_to_lab(rgb)[0].permute(1, 2, 0).numpy()
    np.testing.assert_allclose(ours, reference, atol=2e-3)


def test_delta_e76_known_values():
    black, white = rgb_to_lab(EXTREMES["black"]), rgb_to_lab(EXTREMES["white"])
    assert delta_e76(black, white).mean().item() == pytest.approx(100.0, abs=1e-3)
    assert delta_e76(white, white).max().item() < 1e-5
    assert DeltaELoss()(EXTREMES["black"], EXTREMES["white"]).item() == pytest.approx(1.0, abs=1e-5)


def test_lab_gradients_finite_outside_the_unit_range():
    values = torch.tensor([-0.2, 0.0, 0.02, 0.5, 1.0, 1.3])  # a network's unclamped output
    rgb = values.view(1, 1, 1, 6).expand(1, 3, 1, 6).clone().requires_grad_()
    rgb_to_lab(rgb).sum().backward()
    assert torch.isfinite(rgb.grad).all() and rgb.grad.abs().sum() > 0
    assert srgb_to_linear(torch.tensor([0.04045])).item() == pytest.approx(0.04045 / 12.92)


def test_hue_is_zero_where_the_chroma_is_at_most_eps():
    # hue is undefined for near-grey pixels: 0 up to chroma eps = 1e-3, a real hue just above it
    at_eps = rgb_to_hsv(torch.tensor([0.0, 1e-3, 0.0]).view(1, 3, 1, 1)).flatten()
    above = rgb_to_hsv(torch.tensor([0.0, 1.1e-3, 0.0]).view(1, 3, 1, 1)).flatten()
    assert at_eps[0].item() == 0.0 and above[0].item() == pytest.approx(1 / 3)


def test_delta_e76_of_equal_colours_is_its_eps():
    lab = rgb_to_lab(torch.rand(1, 3, 2, 2, generator=torch.Generator().manual_seed(0)))
    assert delta_e76(lab, lab).flatten().tolist() == pytest.approx([1e-6] * 4, rel=1e-3)
    assert delta_e76(lab, lab, eps=0.5).flatten().tolist() == pytest.approx([0.5] * 4, rel=1e-6)


# --------------------------------------------------------------------------- histogram

def test_soft_histogram_interpolates_between_bin_centres():
    values = torch.tensor([0.125, 0.5]).view(1, 1, 2)  # 4 bins, centres 0.125 0.375 0.625 0.875
    histogram = soft_histogram(values, bins=4)
    assert histogram.flatten().tolist() == pytest.approx([0.5, 0.25, 0.25, 0.0])
    wide = soft_histogram(torch.rand(2, 3, 50), bins=8, sigma=0.3)
    assert wide.sum(dim=2).flatten().tolist() == pytest.approx([1.0] * 6)
    weights = torch.tensor([0.0, 1.0]).view(1, 1, 2)
    assert soft_histogram(values, bins=4, weights=weights).flatten().tolist() == pytest.approx([0, 0.5, 0.5, 0])
    with pytest.raises(ValueError, match="sigma"):
        soft_histogram(values, bins=4, sigma=0.0)


def test_soft_histogram_clamps_values_into_the_edge_bins():
    # out-of-range values count in the first and last bins; a value at an edge keeps its full weight
    outside = soft_histogram(torch.tensor([-0.5, 1.5]).view(1, 1, 2), bins=4)
    assert outside.flatten().tolist() == pytest.approx([0.5, 0.0, 0.0, 0.5])
    edge_and_centre = soft_histogram(torch.tensor([0.0, 0.625]).view(1, 1, 2), bins=4)
    assert edge_and_centre.flatten().tolist() == pytest.approx([0.5, 0.0, 0.5, 0.0])


def test_soft_histogram_wide_kernel_is_triangular_and_renormalised_at_the_edges():
    # sigma = 2 bin widths: a value at a centre gives 1/2 to each neighbour before normalising
    centre = soft_histogram(torch.tensor([0.375]).view(1, 1, 1), bins=4, sigma=0.5)
    assert centre.flatten().tolist() == pytest.approx([0.25, 0.5, 0.25, 0.0])
    # 0.1 and 0.9: the kernel parts beyond the first and last centres are dropped, the rest renormalised
    edges = soft_histogram(torch.tensor([0.1, 0.9]).view(1, 1, 2), bins=4, sigma=0.5)
    near, far = 0.95 / 1.4, 0.45 / 1.4
    assert edges.flatten().tolist() == pytest.approx([near / 2, far / 2, far / 2, near / 2], rel=1e-5)


def test_soft_histogram_is_normalised_when_the_weights_add_up_to_less_than_one():
    values, weights = torch.tensor([0.125, 0.5]).view(1, 1, 2), torch.tensor([0.0, 0.5]).view(1, 1, 2)
    assert soft_histogram(values, bins=4, weights=weights).flatten().tolist() == pytest.approx([0, 0.5, 0.5, 0])


def test_histogram_loss_uses_its_sigma():
    generator = torch.Generator().manual_seed(0)
    pred, target = torch.rand(1, 3, 4, 4, generator=generator), torch.rand(1, 3, 4, 4, generator=generator)
    cdfs = [soft_histogram(x, bins=4, sigma=0.5).cumsum(dim=2) for x in (pred, target)]
    expected = (cdfs[0] - cdfs[1]).abs().sum(dim=2).mean().item() / 4
    assert HistogramLoss(bins=4, sigma=0.5)(pred, target).item() == pytest.approx(expected, rel=1e-6)
    assert HistogramLoss(bins=4)(pred, target).item() != pytest.approx(expected, rel=1e-3)


def test_histogram_loss_is_earth_movers_distance():
    loss = HistogramLoss(bins=4)
    assert loss(torch.full((2, 3, 4, 4), 0.125), torch.full((2, 3, 4, 4), 0.625)).item() == pytest.approx(0.5)
    pred = torch.rand(1, 3, 8, 8)
    assert loss(pred, pred).item() == 0.0
    # the distance between distributions ignores where pixels are
    assert loss(pred.flip(-1), pred).item() == pytest.approx(0.0, abs=1e-6)
    masked_out = torch.zeros(1, 1, 8, 8)
    assert loss(pred, 1 - pred, weights=masked_out).item() == 0.0


def test_histogram_gradient_reaches_values():
    pred = torch.full((1, 3, 4, 4), 0.3, requires_grad=True)
    HistogramLoss(bins=8)(pred, torch.full((1, 3, 4, 4), 0.7)).backward()
    assert (pred.grad < 0).all()  # moving values up towards the target's lowers the loss


# --------------------------------------------------------------------------- colour

def test_multiscale_color_known_values():
    grey, dark_grey = constant([0.5, 0.5, 0.5]), constant([0.2, 0.2, 0.2])
    loss = MultiScaleColorLoss()
    assert loss(grey, dark_grey).item() == pytest.approx(0.0, abs=1e-5)  # lightness is not its business
    red_ab = rgb_to_lab(EXTREMES["red"])[0, 1:, 0, 0]
    assert loss(EXTREMES["red"], grey).item() == pytest.approx(red_ab.abs().mean().item() / 100, rel=1e-4)
    with pytest.raises(ValueError, match="scales"):
        MultiScaleColorLoss(scales=(0,))


def test_multiscale_color_compares_block_mean_colours_at_a_coarse_scale():
    # a red/green checkerboard against itself moved by one pixel: every pixel's colour is wrong, every
    # 2x2 block's mean colour right
    y, x = torch.meshgrid(torch.arange(8), torch.arange(8), indexing="ij")
    red = ((x + y) % 2).float().expand(1, 1, 8, 8)
    checkerboard = torch.cat([red, 1.0 - red, torch.zeros_like(red)], dim=1)
    moved = checkerboard.roll(1, dims=-1)
    assert MultiScaleColorLoss(scales=(2,))(checkerboard, moved).item() == pytest.approx(0.0, abs=1e-5)
    assert MultiScaleColorLoss(scales=(1,))(checkerboard, moved).item() > 0.5


def test_color_consistency_known_values():
    target = torch.rand(1, 3, 8, 8) * 0.4 + 0.1
    loss = ColorConsistencyLoss()
    assert loss(2 * target, target).item() == pytest.approx(0.0, abs=1e-4)
    green = constant([0.0, 1.0, 0.0])
    assert loss(EXTREMES["red"], green).item() == pytest.approx(1.0, abs=1e-5)


def test_color_consistency_softens_a_colour_as_dark_as_eps_in_either_image_to_half_its_angle():
    # |v|_eps = sqrt(|v|^2 + eps^2): a red of level eps has |v|_eps = sqrt(2) eps, so its cosine with
    # full red is 1 / sqrt(2) (near-black pixels carry little colour), whichever image it is in
    dark_red = constant([ANGLE_EPS, 0.0, 0.0])
    expected = 1.0 - 1.0 / np.sqrt(2.0 * (1.0 + ANGLE_EPS ** 2))
    assert ColorConsistencyLoss()(dark_red, EXTREMES["red"]).item() == pytest.approx(expected, rel=1e-5)
    assert ColorConsistencyLoss()(EXTREMES["red"], dark_red).item() == pytest.approx(expected, rel=1e-5)


def test_bright_losses_only_see_bright_regions():
    inp = torch.full((1, 3, 8, 8), 0.2)
    inp[..., :4] = 1.0
    sky, wall = constant([0.3, 0.5, 0.9]), constant([0.6, 0.5, 0.4])
    target = torch.where(inp > 0.5, sky, wall)
    wrong_wall = torch.where(inp > 0.5, sky, constant([0.4, 0.5, 0.6]))
    for loss in (BrightHueLoss(), BrightChromaLoss(), BrightRGBLoss(), BrightHistogramLoss(bins=16)):
        assert loss(wrong_wall, target, inp).item() < 1e-3, type(loss).__name__
    opposite_sky = torch.where(inp > 0.5, constant([0.9, 0.7, 0.3]), wall)  # 0.6 - sky: the opposite hue
    assert BrightHueLoss()(opposite_sky, target, inp).item() == pytest.approx(2.0, abs=1e-2)
    grey_sky = torch.where(inp > 0.5, constant([0.5, 0.5, 0.5]), wall)
    sky_chroma = torch.tensor([0.3 - 0.5 * 1.4, 0.8660254 * (0.5 - 0.9)]).norm().item()
    assert BrightChromaLoss()(grey_sky, target, inp).item() == pytest.approx(sky_chroma, rel=1e-2)
    assert BrightRGBLoss()(target + 0.1, target, inp).item() == pytest.approx(0.1, rel=1e-2)
    assert BrightHistogramLoss(bins=16)(grey_sky, target, inp).item() > 0.1


BRIGHT_LOSSES = (BrightHueLoss, BrightChromaLoss, BrightRGBLoss, BrightHistogramLoss)


@pytest.mark.parametrize("loss_class", BRIGHT_LOSSES, ids=lambda cls: cls.__name__)
def test_bright_region_uses_its_threshold_and_softness(loss_class):
    inp = torch.full((1, 3, 2, 2), 0.75)
    mask = loss_class(threshold=0.6, softness=0.2).bright_mask(inp)
    assert mask.flatten().tolist() == pytest.approx([torch.sigmoid(torch.tensor(0.75)).item()] * 4, rel=1e-5)
    with pytest.raises(ValueError, match=f"^{loss_class.__name__} softness must be > 0, got 0$"):
        loss_class(softness=0)


def test_bright_losses_divide_by_at_least_one_pixel_of_bright_region():
    # one bright pixel (b = 0.9975): the region mean divides by max(sum of b, 1) = 1
    inp = torch.full((1, 3, 4, 4), 0.2)
    inp[..., 0, 0] = 1.0
    region = BrightRGBLoss().bright_mask(inp).sum().item()
    assert region == pytest.approx(0.998, abs=1e-3)
    target = torch.tensor([0.9, 0.5, 0.5]).view(1, 3, 1, 1).expand(1, 3, 4, 4)  # chroma length 0.4
    assert BrightRGBLoss()(target + 0.1, target, inp).item() == pytest.approx(0.1 * region, rel=1e-4)
    grey = torch.full((1, 3, 4, 4), 0.5)
    chroma_lost = (0.4 ** 2 + CHROMA_EPS ** 2) ** 0.5 - CHROMA_EPS
    assert BrightChromaLoss()(grey, target, inp).item() == pytest.approx(chroma_lost * region, rel=1e-4)


def test_bright_colour_of_a_grey_target_costs_nothing():
    inp, grey = torch.ones(1, 3, 2, 2), torch.full((1, 3, 2, 2), 0.5)
    # a grey target has no hue to miss, and a grey prediction of it has the right chroma, 0
    assert BrightHueLoss()(constant([1.0, 0.0, 0.0], 2), grey, inp).item() == 0.0
    assert BrightChromaLoss()(torch.full_like(grey, 0.3), grey, inp).item() == pytest.approx(0.0, abs=1e-7)


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


def test_color_direction_softens_changes_of_the_size_of_eps_in_both_norms():
    # one pixel: the output moves red by 0.1, the edit by 0.3; with eps = 0.1 both norms are sqrt(|d|^2 + eps^2)
    inp = torch.full((1, 3, 1, 1), 0.5)
    pred, target = inp.clone(), inp.clone()
    pred[:, 0] += 0.1
    target[:, 0] += 0.3
    cosine = 0.1 * 0.3 / ((0.1 ** 2 + 0.01) ** 0.5 * (0.3 ** 2 + 0.01) ** 0.5)
    assert ColorDirectionLoss(eps=0.1)(pred, target, inp).item() == pytest.approx(1.0 - cosine, rel=1e-4)
