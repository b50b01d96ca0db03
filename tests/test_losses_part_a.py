"""The part-A losses: LAB, focal frequency, histogram, luminance attention, zone-aware, colour, bright-region,
VGG perceptual / Gram style and adversarial -- known values, extremes, autocast, and VGG weight loading."""
import numpy as np
import pytest
import torch
from skimage.color import rgb2lab
from torch import nn
from torchvision.models.vgg import cfgs, make_layers

from losses.adversarial import AdversarialLoss
from losses.bright_color import BrightChromaLoss, BrightHistogramLoss, BrightHueLoss, BrightRGBLoss
from losses.color_angle import ColorConsistencyLoss
from losses.colorspace import delta_e76, rgb_to_lab, srgb_to_linear
from losses.frequency import FocalFrequencyLoss
from losses.histogram import HistogramLoss, soft_histogram
from losses.lab import DeltaELoss, MultiScaleColorLoss
from losses.luminance_attention import LuminanceAttentionLoss, luminance_attention_maps
from losses.perceptual import (VGG19_LAYER_NAMES, GramStyleLoss, VGG19Features, VGGPerceptualLoss,
                               add_vgg_args, build_vgg19_features, gram_matrix)
from losses.zone_aware import ZoneAwareLoss, hdr_zone_masks


def constant(rgb, size=8):
    return torch.tensor(rgb, dtype=torch.float32).view(1, 3, 1, 1).expand(1, 3, size, size).clone()


EXTREMES = {
    "black": constant([0.0, 0.0, 0.0]),
    "white": constant([1.0, 1.0, 1.0]),
    "red": constant([1.0, 0.0, 0.0]),
    "blue": constant([0.0, 0.0, 1.0]),
}


@pytest.fixture(scope="module")
def random_vgg():
    """VGG losses on a random VGG19 (built once: the same code path as real weights)."""
    with pytest.warns(UserWarning, match="randomly initialised"):
        return VGGPerceptualLoss(vgg_weights="random"), GramStyleLoss(vgg_weights="random")


def plain_losses():
    return [FocalFrequencyLoss(), FocalFrequencyLoss(alpha=2.0, log_matrix=True), HistogramLoss(bins=16),
            LuminanceAttentionLoss(), ZoneAwareLoss(), DeltaELoss(), MultiScaleColorLoss(scales=(1, 2, 4)),
            ColorConsistencyLoss(), BrightHueLoss(), BrightChromaLoss(), BrightRGBLoss(), BrightHistogramLoss()]


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


# --------------------------------------------------------------------------- focal frequency

def test_focal_frequency_known_values():
    target = torch.rand(1, 3, 8, 8)
    loss = FocalFrequencyLoss()
    assert loss(target, target).item() == 0.0
    # a constant shift only touches the DC coefficient (weight 1): the loss is the shift squared
    assert loss(target + 0.2, target).item() == pytest.approx(0.04, rel=1e-4)
    assert FocalFrequencyLoss(log_matrix=True)(target + 0.2, target).item() == pytest.approx(0.04, rel=1e-4)
    # shift c plus a checkerboard of amplitude d: DC weight 1, Nyquist weight d / c -> c^2 + d^3 / c
    y, x = torch.meshgrid(torch.arange(8), torch.arange(8), indexing="ij")
    checkerboard = ((-1.0) ** (x + y)).expand(1, 3, 8, 8)
    assert loss(target + 0.2 + 0.1 * checkerboard, target).item() == pytest.approx(0.04 + 0.001 / 0.2, rel=1e-4)


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


# --------------------------------------------------------------------------- colour

def test_multiscale_color_known_values():
    grey, dark_grey = constant([0.5, 0.5, 0.5]), constant([0.2, 0.2, 0.2])
    loss = MultiScaleColorLoss()
    assert loss(grey, dark_grey).item() == pytest.approx(0.0, abs=1e-5)  # lightness is not its business
    red_ab = rgb_to_lab(EXTREMES["red"])[0, 1:, 0, 0]
    assert loss(EXTREMES["red"], grey).item() == pytest.approx(red_ab.abs().mean().item() / 100, rel=1e-4)
    with pytest.raises(ValueError, match="scales"):
        MultiScaleColorLoss(scales=(0,))


def test_color_consistency_known_values():
    target = torch.rand(1, 3, 8, 8) * 0.4 + 0.1
    loss = ColorConsistencyLoss()
    assert loss(2 * target, target).item() == pytest.approx(0.0, abs=1e-4)
    green = constant([0.0, 1.0, 0.0])
    assert loss(EXTREMES["red"], green).item() == pytest.approx(1.0, abs=1e-5)


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


# --------------------------------------------------------------------------- VGG

def test_vgg_weights_load_from_a_file(tmp_path):
    features = make_layers(cfgs["E"])
    state_dict = {f"features.{key}": value for key, value in features.state_dict().items()}
    state_dict["classifier.6.bias"] = torch.zeros(3)  # torchvision's file also holds the classifier
    path = tmp_path / "vgg19.pth"
    torch.save(state_dict, path)
    loaded = build_vgg19_features(str(path))
    assert all(torch.equal(a, b) for a, b in zip(loaded.state_dict().values(), features.state_dict().values()))
    assert not any(p.requires_grad for p in loaded.parameters())
    perceptual = VGGPerceptualLoss(layers=("relu1_2", "relu2_2"), vgg_weights=path)
    assert len(perceptual.features.body) == VGG19_LAYER_NAMES.index("relu2_2") + 1
    bad = tmp_path / "bad.pth"
    torch.save({"weight": torch.zeros(1)}, bad)
    with pytest.raises(ValueError, match="not a torchvision VGG19 state_dict"):
        build_vgg19_features(bad)


def test_vgg_missing_weights_is_one_clear_line(tmp_path, monkeypatch):
    missing = tmp_path / "nowhere.pth"
    with pytest.raises(FileNotFoundError) as error:
        VGGPerceptualLoss(vgg_weights=str(missing))
    message = str(error.value)
    assert "\n" not in message and str(missing) in message
    assert "https://download.pytorch.org/models/vgg19-dcbb9e9d.pth" in message and "--vgg-weights" in message
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    with pytest.raises(FileNotFoundError, match=str(tmp_path / "hub" / "checkpoints" / "vgg19-dcbb9e9d.pth")):
        GramStyleLoss()
    with pytest.raises(ValueError, match="unknown VGG19 layers"):
        VGG19Features(layers=("relu9_9",), vgg_weights="random")


def test_vgg_flag():
    import argparse
    parser = argparse.ArgumentParser()
    add_vgg_args(parser)
    assert parser.parse_args([]).vgg_weights is None
    assert parser.parse_args(["--vgg-weights", "random"]).vgg_weights == "random"


def test_vgg_losses_known_values(random_vgg):
    perceptual, style = random_vgg
    image = torch.rand(2, 3, 32, 32)
    assert perceptual(image, image).item() == 0.0 and style(image, image).item() == 0.0
    assert perceptual(image.flip(-1), image).item() > 0
    # Gram matrices ignore where features are: a mirrored image has (almost) the same style, a flat one not
    assert style(image.flip(-1), image).item() < 0.1 * style(torch.full_like(image, 0.5), image).item()
    assert gram_matrix(torch.ones(1, 2, 2, 2)).flatten().tolist() == pytest.approx([0.5] * 4)


def test_vgg_stays_frozen_in_train_mode(random_vgg):
    perceptual, _ = random_vgg
    perceptual.train()
    assert not perceptual.features.training
    pred = torch.rand(1, 3, 32, 32, requires_grad=True)
    perceptual(pred, torch.rand(1, 3, 32, 32)).backward()
    assert pred.grad.abs().sum() > 0
    assert all(p.grad is None for p in perceptual.parameters())


# --------------------------------------------------------------------------- adversarial

class ConstantCritic(nn.Module):
    """A 'discriminator' whose logits are k times the mean of its input's image half."""

    def __init__(self, k: float):
        super().__init__()
        self.k = nn.Parameter(torch.tensor(k))

    def forward(self, x):
        return self.k * x[:, 3:].mean(dim=1, keepdim=True)


def test_adversarial_losses_known_values():
    inp, image = torch.rand(1, 3, 4, 4), torch.ones(1, 3, 4, 4)
    hinge = AdversarialLoss(ConstantCritic(0.5), "hinge")
    assert hinge(image, image, inp).item() == pytest.approx(-0.5)
    assert hinge.discriminator_loss(image, image, inp).item() == pytest.approx(0.5 + 1.5)
    lsgan = AdversarialLoss(ConstantCritic(0.5), "lsgan")
    assert lsgan(image, image, inp).item() == pytest.approx(0.25)
    assert lsgan.discriminator_loss(image, image, inp).item() == pytest.approx(0.5 * (0.25 + 0.25))
    with pytest.raises(ValueError, match="hinge"):
        AdversarialLoss(ConstantCritic(1.0), "wgan")


def test_adversarial_gradients_go_to_the_right_network():
    loss = AdversarialLoss(ConstantCritic(0.5), "hinge")
    pred = torch.rand(1, 3, 4, 4, requires_grad=True)
    loss(pred, pred, torch.rand(1, 3, 4, 4)).backward()
    assert pred.grad is not None and loss.discriminator.k.grad is None and loss.discriminator.k.requires_grad
    pred.grad = None
    loss.discriminator_loss(pred, torch.rand(1, 3, 4, 4), torch.rand(1, 3, 4, 4)).backward()
    assert pred.grad is None and loss.discriminator.k.grad is not None


# --------------------------------------------------------------------------- every loss at the extremes

def all_losses(random_vgg):
    return plain_losses() + list(random_vgg)


@pytest.mark.parametrize("name", list(EXTREMES))
def test_gradients_finite_at_extremes(name, random_vgg):
    size = 16  # the VGG losses need a few pooling levels
    extreme = constant(EXTREMES[name][0, :, 0, 0].tolist(), size)
    for loss in all_losses(random_vgg):
        for target in (torch.rand(1, 3, size, size), extreme):
            pred = extreme.clone().requires_grad_(True)
            value = loss(pred, target, extreme)
            value.backward()
            assert torch.isfinite(value) and torch.isfinite(pred.grad).all(), (type(loss).__name__, name)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_losses_finite_under_autocast(dtype, random_vgg):
    pred = torch.rand(1, 3, 16, 16).requires_grad_(True)
    target, inp = torch.rand(1, 3, 16, 16), torch.rand(1, 3, 16, 16)
    inp[..., :4] = 1.0
    with torch.autocast("cpu", dtype=dtype):
        low = pred * 1.0
        values = [loss(low, target, inp) for loss in all_losses(random_vgg)]
    sum(values).backward()
    assert all(v.dtype == torch.float32 and torch.isfinite(v) for v in values)
    assert torch.isfinite(pred.grad).all()
