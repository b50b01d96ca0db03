import colorsys
import re
from functools import partial

import pytest
import torch

from losses import CharbonnierLoss, CombinedLoss, HSVLoss, L1Loss, SaturationLoss, WindowAwareLoss, overexposure_mask
from losses.color import SATURATION_FORMS, chroma_length
from losses.colorspace import chroma_plane, luminance, rgb_to_hsv
from losses.depth_maps import normalize_depth
from losses.side_output import SideOutputLoss
from losses.weighting import NormalizedLoss, UncertaintyWeightedLoss
from losses.window import WINDOW_NORMALIZATIONS

EXTREMES = {
    "black": torch.zeros(1, 3, 8, 8),
    "white": torch.ones(1, 3, 8, 8),
    "red": torch.tensor([1.0, 0.0, 0.0]).view(1, 3, 1, 1).expand(1, 3, 8, 8).clone(),
    "blue": torch.tensor([0.0, 0.0, 1.0]).view(1, 3, 1, 1).expand(1, 3, 8, 8).clone(),
}
# Factories, not instances: built inside each test, so mutation testing (which cannot test code that
# runs while pytest imports this file) sees their constructors.
LOSS_FACTORIES = [L1Loss, CharbonnierLoss, WindowAwareLoss, partial(WindowAwareLoss, normalization="image"),
                  *(partial(SaturationLoss, form) for form in SATURATION_FORMS),
                  *(partial(HSVLoss, saturation_form=form) for form in SATURATION_FORMS)]


def factory_name(factory):
    if isinstance(factory, partial):
        return "-".join([factory.func.__name__, *map(str, factory.args), *map(str, factory.keywords.values())])
    return factory.__name__


def test_pixel_losses_known_values():
    pred, target = torch.full((1, 3, 4, 4), 0.3), torch.full((1, 3, 4, 4), 0.1)
    assert L1Loss()(pred, target).item() == pytest.approx(0.2)
    assert CharbonnierLoss(eps=1e-3)(pred, target).item() == pytest.approx((0.2 ** 2 + 1e-6) ** 0.5)


def test_charbonnier_default_eps_is_1e_3():
    # at zero error the loss is eps itself
    assert CharbonnierLoss()(torch.zeros(1, 3, 2, 2), torch.zeros(1, 3, 2, 2)).item() == pytest.approx(1e-3)


def test_hsv_matches_colorsys():
    rgb = torch.rand(1, 3, 5, 7, generator=torch.Generator().manual_seed(0))
    hsv = rgb_to_hsv(rgb, eps=1e-9)
    for y in range(5):
        for x in range(7):
            ref = colorsys.rgb_to_hsv(*rgb[0, :, y, x].tolist())
            assert hsv[0, :, y, x].tolist() == pytest.approx(list(ref), abs=1e-5)


def test_luminance_and_chroma_plane():
    assert luminance(torch.ones(1, 3, 2, 2)).flatten().tolist() == pytest.approx([1.0] * 4)
    assert chroma_plane(torch.full((1, 3, 2, 2), 0.5)).abs().max().item() == pytest.approx(0.0)


def test_saturation_loss_known_values_of_every_form():
    grey, red = torch.full((1, 3, 4, 4), 0.5), EXTREMES["red"][:, :, :4, :4]
    pink = torch.tensor([0.5, 0.25, 0.25]).view(1, 3, 1, 1).expand(1, 3, 4, 4)  # S 0.5, V 0.5, chroma 0.25
    green = torch.tensor([0.0, 0.8, 0.0]).view(1, 3, 1, 1).expand(1, 3, 4, 4)  # chroma 0.8
    assert SaturationLoss("catalog")(grey, red).item() == pytest.approx(1.0)
    assert SaturationLoss("catalog")(pink, grey).item() == pytest.approx(0.5)
    # weighted: |dS| times the prediction's value
    assert SaturationLoss("weighted")(grey, red).item() == pytest.approx(0.5)
    assert SaturationLoss("weighted")(pink, grey).item() == pytest.approx(0.25)
    assert SaturationLoss("weighted")(red, grey).item() == pytest.approx(1.0)
    # chroma (the default): difference of chroma lengths, max - min for these single-hue colours
    assert SaturationLoss()(grey, red).item() == pytest.approx(1.0, abs=2e-3)
    assert SaturationLoss()(pink, grey).item() == pytest.approx(0.25, abs=2e-3)
    assert SaturationLoss()(green, pink).item() == pytest.approx(0.55, abs=2e-3)
    for form in SATURATION_FORMS:
        assert SaturationLoss(form)(red, red).item() == pytest.approx(0.0)
    # a black prediction shows no colour: the weighted form does not ask it for any
    assert SaturationLoss("weighted")(torch.zeros(1, 3, 4, 4), red).item() == 0.0


def test_chroma_length_is_zero_at_grey():
    grey = torch.full((1, 3, 2, 2), 0.4)
    assert chroma_length(grey).abs().max().item() < 1e-7
    red = torch.tensor([1.0, 0.0, 0.0]).view(1, 3, 1, 1)
    assert chroma_length(red).item() == pytest.approx(1.0, abs=1e-3)


def test_weighted_saturation_weighs_each_pixel_by_its_value_clamped_to_the_unit_range():
    target = torch.full((1, 3, 1, 1), 0.5)  # grey: S = 0
    too_bright = torch.tensor([1.3, 0.65, 0.65]).view(1, 3, 1, 1)  # S = 0.5, V = 1.3 counts as 1
    assert SaturationLoss("weighted")(too_bright, target).item() == pytest.approx(0.5, rel=1e-6)
    below_black = torch.tensor([-0.1, -0.2, -0.2]).view(1, 3, 1, 1)  # S = 0.1 / 1e-3, V < 0 counts as 0
    assert SaturationLoss("weighted")(below_black, target).item() == 0.0


def test_hsv_loss_is_the_weighted_sum_of_its_hue_saturation_and_value_terms():
    red = torch.tensor([1.0, 0.0, 0.0]).view(1, 3, 1, 1)
    green = torch.tensor([0.0, 1.0, 0.0]).view(1, 3, 1, 1)
    # same saturation and value: only the hue term, the mean |chroma-plane difference| (1.5, -sqrt(3)/2)
    assert HSVLoss(1.0, 0.0, 0.0)(red, green).item() == pytest.approx((1.5 + 3 ** 0.5 / 2) / 2, rel=1e-6)
    assert HSVLoss(1.0, 1.0, 1.0)(red, green).item() == pytest.approx((1.5 + 3 ** 0.5 / 2) / 2, rel=1e-6)
    # two greys: only the value term
    assert HSVLoss(0.0, 0.0, 1.0)(torch.full((1, 3, 1, 1), 0.6), torch.full((1, 3, 1, 1), 0.2)).item() == \
        pytest.approx(0.4, rel=1e-6)
    generator = torch.Generator().manual_seed(0)
    pred, target = torch.rand(1, 3, 4, 4, generator=generator), torch.rand(1, 3, 4, 4, generator=generator)
    hue, saturation, value = (HSVLoss(*weights)(pred, target).item()
                              for weights in ((1.0, 0.0, 0.0), (0.0, 1.0, 0.0), (0.0, 0.0, 1.0)))
    assert HSVLoss()(pred, target).item() == pytest.approx(hue + saturation + value, rel=1e-6)
    assert HSVLoss(0.5, 2.0, 3.0)(pred, target).item() == pytest.approx(0.5 * hue + 2 * saturation + 3 * value,
                                                                       rel=1e-6)


def test_default_saturation_form_is_chroma_everywhere():
    assert SaturationLoss().form == "chroma" and HSVLoss().saturation_form == "chroma"


def test_unknown_saturation_form_is_rejected():
    with pytest.raises(ValueError, match="chroma, weighted, catalog"):
        SaturationLoss("ratio")
    with pytest.raises(ValueError, match="chroma, weighted, catalog"):
        HSVLoss(saturation_form="ratio")


def near_black_noise(seed: int = 0) -> torch.Tensor:
    """Pure black, then sensor-noise-level colours from V = 1e-5 up to 0.02 (crushed shadows)."""
    generator = torch.Generator().manual_seed(seed)
    scale = torch.logspace(-5, torch.log10(torch.tensor(0.02)).item(), 63).view(1, 1, 1, 63)
    noise = torch.rand(1, 3, 4, 63, generator=generator) * scale
    return torch.cat([torch.zeros(1, 3, 4, 1), noise], dim=-1)


@pytest.mark.parametrize("amp", [None, torch.bfloat16])
def test_chroma_and_weighted_saturation_gradients_are_bounded_like_l1_at_black(amp):
    target = torch.rand(1, 3, 4, 64, generator=torch.Generator().manual_seed(1))
    gradients = {}
    for form in SATURATION_FORMS:
        pred = near_black_noise().requires_grad_(True)
        with torch.autocast("cpu", dtype=amp, enabled=amp is not None):
            # a bf16 network output (autocast itself leaves element-wise ops in fp32)
            value = SaturationLoss(form)(pred.to(amp) if amp else pred, target)
        value.backward()
        assert value.dtype == torch.float32 and torch.isfinite(value) and torch.isfinite(pred.grad).all()
        pixels = pred.numel() // 3
        gradients[form] = pred.grad.abs() * pixels  # in units of a per-pixel mean's gradient, 1 / (N H W)
    # every channel's gradient at most 1 / (N H W), from black up through sensor noise...
    assert gradients["weighted"].max() <= 1.0 + 1e-3
    assert gradients["chroma"].max() <= 1.0 + 1e-3
    # ...where the catalog's 1/V gradient is hundreds of times larger
    assert gradients["catalog"].max() > 100.0


def test_chroma_saturation_gradient_never_changes_a_pixels_level():
    """Its three channel gradients sum to zero in every pixel (the chroma plane is orthogonal to grey),
    so it can make a colour more or less colourful but never lift or darken it: that is L1's job.
    The weighted form does not have this property."""
    generator = torch.Generator().manual_seed(3)
    pred = torch.cat([near_black_noise(), torch.rand(1, 3, 4, 64, generator=generator)], dim=-1)
    target = torch.rand(1, 3, 4, 128, generator=generator)
    sums = {}
    for form in ("chroma", "weighted"):
        leaf = pred.clone().requires_grad_(True)
        SaturationLoss(form)(leaf, target).backward()
        sums[form] = leaf.grad.sum(1).abs().max().item() * (leaf.numel() // 3)
        assert leaf.grad.abs().max() > 0
    assert sums["chroma"] < 1e-5
    assert sums["weighted"] > 0.1


def test_hsv_loss_saturation_form_weights_only_its_saturation_term():
    pink, grey = torch.tensor([0.5, 0.25, 0.25]).view(1, 3, 1, 1).expand(1, 3, 4, 4), torch.full((1, 3, 4, 4), 0.5)
    only_saturation = dict(hue_weight=0.0, saturation_weight=1.0, value_weight=0.0)
    assert HSVLoss(**only_saturation)(pink, grey).item() == pytest.approx(0.25, abs=2e-3)
    assert HSVLoss(**only_saturation, saturation_form="weighted")(pink, grey).item() == pytest.approx(0.25)
    assert HSVLoss(**only_saturation, saturation_form="catalog")(pink, grey).item() == pytest.approx(0.5)


def test_window_loss_weighs_overexposed_pixels_more():
    inp = torch.full((1, 3, 8, 8), 0.3)
    inp[..., :4] = 1.0  # left half blown out
    target = torch.zeros_like(inp)
    error_in_window = torch.zeros_like(inp)
    error_in_window[..., :4] = 0.2
    error_in_room = torch.zeros_like(inp)
    error_in_room[..., 4:] = 0.2
    loss = WindowAwareLoss()
    assert loss(error_in_window, target, inp).item() == pytest.approx(0.2, rel=0.05)
    assert loss(error_in_room, target, inp).item() < 0.01
    mask = overexposure_mask(inp)
    assert mask[..., :4].min() > 0.95 and mask[..., 4:].max() < 0.01
    # nothing over-exposed: the term is (close to) zero, and finite
    assert loss(error_in_room, target, torch.full_like(inp, 0.3)).item() < 1e-4


def test_image_normalised_window_loss_known_values():
    inp = torch.full((1, 3, 8, 8), 0.3)
    inp[..., :2] = 1.0  # a quarter of the photo blown out
    target, error_in_window, error_in_room = torch.zeros_like(inp), torch.zeros_like(inp), torch.zeros_like(inp)
    error_in_window[..., :2] = 0.2
    error_in_room[..., 2:] = 0.2
    image = WindowAwareLoss(normalization="image")
    # mean over the whole photo: 0.2 x the mask (0.98 at luma 1) on a quarter of it, where the region
    # form gives the full 0.2
    window_mask = overexposure_mask(inp)[..., :2].mean().item()
    assert window_mask == pytest.approx(0.977, abs=1e-3)
    assert image(error_in_window, target, inp).item() == pytest.approx(0.2 * window_mask / 4, rel=1e-4)
    assert WindowAwareLoss()(error_in_window, target, inp).item() == pytest.approx(0.2, rel=0.02)
    assert image(error_in_room, target, inp).item() < 1e-3
    # next to L1 at weight w it is L1 weighted by (1 + w m): interior pixels keep weight 1
    combined = CombinedLoss({"l1": (1.0, L1Loss()), "window": (2.0, image)})
    uniform_error = torch.full_like(inp, 0.2)
    expected = (0.2 * (1 + 2.0 * overexposure_mask(inp))).mean().item()
    assert combined(uniform_error, target, inp)["loss"].item() == pytest.approx(expected)
    assert expected == pytest.approx(0.2 * (1 + 2.0 * window_mask / 4), rel=1e-4)


def test_region_window_loss_divides_by_at_least_one_pixel_of_window():
    # one blown-out pixel (mask 0.977): the region mean divides by max(sum of the mask, 1) = 1
    inp = torch.full((1, 3, 4, 4), 0.3)
    inp[..., 0, 0] = 1.0
    target = torch.full_like(inp, 0.5)
    window_share = overexposure_mask(inp).sum().item()
    assert window_share == pytest.approx(0.977, abs=1e-3)
    assert WindowAwareLoss()(target + 0.2, target, inp).item() == pytest.approx(0.2 * window_share, rel=1e-4)


def test_window_loss_uses_its_threshold_and_softness():
    inp, target = torch.full((1, 3, 4, 4), 0.75), torch.full((1, 3, 4, 4), 0.5)
    loss = WindowAwareLoss(threshold=0.7, softness=0.2, normalization="image")
    expected = 0.2 * torch.sigmoid(torch.tensor((0.75 - 0.7) / 0.2)).item()
    assert loss(target + 0.2, target, inp).item() == pytest.approx(expected, rel=1e-4)


def test_unknown_window_normalization_is_rejected():
    with pytest.raises(ValueError, match="region, image"):
        WindowAwareLoss(normalization="mask")


@pytest.mark.parametrize("amp", [None, torch.bfloat16])
@pytest.mark.parametrize("normalization", WINDOW_NORMALIZATIONS)
def test_window_loss_gradient_is_bounded_at_black(normalization, amp):
    target = torch.rand(1, 3, 4, 64, generator=torch.Generator().manual_seed(1))
    inp = torch.ones(1, 3, 4, 64)  # all window: the mask is ~1 everywhere
    pred = near_black_noise().requires_grad_(True)
    with torch.autocast("cpu", dtype=amp, enabled=amp is not None):
        value = WindowAwareLoss(normalization=normalization)(pred.to(amp) if amp else pred, target, inp)
    value.backward()
    assert value.dtype == torch.float32 and torch.isfinite(value) and torch.isfinite(pred.grad).all()
    # an m-weighted L1: no element's gradient above a per-element mean's, 1 / (N C H W) (up to bf16's
    # rounding of the gradient, 2^-8)
    assert (pred.grad.abs() * pred.numel()).max() <= 1.0 + 1e-3 + (4e-3 if amp else 0.0)


@pytest.mark.parametrize("name", list(EXTREMES))
@pytest.mark.parametrize("make_loss", LOSS_FACTORIES, ids=factory_name)
def test_gradients_finite_at_extremes(make_loss, name):
    loss = make_loss()
    pred = EXTREMES[name].clone().requires_grad_(True)
    target = torch.rand_like(pred)
    value = loss(pred, target, EXTREMES[name])
    value.backward()
    assert torch.isfinite(value) and torch.isfinite(pred.grad).all()


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_losses_finite_under_autocast(dtype):
    pred = torch.rand(1, 3, 16, 16).requires_grad_(True)
    with torch.autocast("cpu", dtype=dtype):
        low = pred * 1.0
        values = [loss(low, torch.rand(1, 3, 16, 16), torch.ones(1, 3, 16, 16)) for loss in (make() for make in LOSS_FACTORIES)]
    total = sum(values)
    total.backward()
    assert all(v.dtype == torch.float32 and torch.isfinite(v) for v in values)
    assert torch.isfinite(pred.grad).all()


def test_combined_loss_reports_every_term_and_weights_them():
    pred, target, inp = torch.full((1, 3, 8, 8), 0.4), torch.full((1, 3, 8, 8), 0.1), torch.ones(1, 3, 8, 8)
    combined = CombinedLoss({"l1": (1.0, L1Loss()), "window": (0.5, WindowAwareLoss()),
                             "saturation": (0.3, SaturationLoss()), "off": (0.0, L1Loss())})
    values = combined(pred, target, inp)
    assert set(values) == {"loss", "l1", "window", "saturation"}
    expected = values["l1"] + 0.5 * values["window"] + 0.3 * values["saturation"]
    assert values["loss"].item() == pytest.approx(expected.item())
    assert not values["l1"].requires_grad
    with pytest.raises(ValueError, match="non-zero weight"):
        CombinedLoss({"l1": (0.0, L1Loss())})


class InputWeightedL1(torch.nn.Module):
    """mean |pred - target| weighted by the as-shot input: a term whose value depends on all three arguments."""

    def forward(self, pred, target, inp=None):
        return ((pred - target).abs() * inp).mean()


@pytest.mark.parametrize("combination", ["uncertainty", "normalized"])
def test_learned_and_normalised_weightings_pass_pred_target_and_input_to_every_term(combination):
    pred, target = torch.full((1, 3, 4, 4), 0.7), torch.full((1, 3, 4, 4), 0.2)
    inp = torch.linspace(0, 1, 48).view(1, 3, 4, 4)
    term = InputWeightedL1()
    if combination == "uncertainty":
        criterion = UncertaintyWeightedLoss({"l1": term})
    else:
        criterion = NormalizedLoss({"l1": (2.0, term)})
    values = criterion(pred, target, inp)
    expected = term(pred, target, inp)
    assert values["l1"].item() == pytest.approx(expected.item()) and not values["l1"].requires_grad
    # with s = 0 the uncertainty weight is 1; the first normalised step divides by itself
    assert values["loss"].item() == pytest.approx(expected.item() if combination == "uncertainty" else 2.0)


def test_combined_loss_refuses_having_no_term_with_a_non_zero_weight():
    with pytest.raises(ValueError, match="^CombinedLoss needs at least one term with a non-zero weight$"):
        CombinedLoss({"l1": (0.0, L1Loss())})


def test_weightings_refuse_having_no_term_and_drop_zero_weights():
    with pytest.raises(ValueError, match="^UncertaintyWeightedLoss needs at least one term$"):
        UncertaintyWeightedLoss({})
    with pytest.raises(ValueError, match="^NormalizedLoss needs at least one term with a non-zero weight$"):
        NormalizedLoss({"l1": (0.0, L1Loss())})
    assert list(NormalizedLoss({"l1": (1.0, L1Loss()), "off": (0.0, L1Loss())}).terms) == ["l1"]


def test_side_output_is_compared_with_the_block_means_of_a_textured_target_not_a_sample_of_it():
    y, x = torch.meshgrid(torch.arange(16), torch.arange(16), indexing="ij")
    checkerboard = ((x + y) % 2).float().expand(1, 3, 16, 16)  # every 8x8 block averages to 0.5
    assert SideOutputLoss()(torch.full((1, 3, 2, 2), 0.5), checkerboard).item() == pytest.approx(0.0, abs=1e-6)


@pytest.mark.parametrize("shape", [(1, 3, 4, 4), (1, 4, 4), (4, 4)])
def test_normalize_depth_rejects_a_map_that_is_not_one_channel_4d_naming_its_shape(shape):
    # a 3-channel 4-D map must fail too, not only a map of the wrong rank
    with pytest.raises(ValueError, match=re.escape(f"got {shape}")):
        normalize_depth(torch.rand(shape))
