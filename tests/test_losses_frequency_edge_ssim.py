"""Detail losses: focal frequency, edge (Sobel) and SSIM (1 - losses.ssim.ssim): known values."""
import pytest
import torch

from losses.edge import EdgeLoss
from losses.frequency import FocalFrequencyLoss
from losses.ssim import ssim
from losses.structural import SSIMLoss


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


def test_focal_frequency_alpha_is_the_exponent_of_the_spectrum_weight():
    # the Nyquist weight of shift c plus checkerboard d is (d / c)^alpha: c^2 + d^4 / c^2 at alpha 2
    target = torch.rand(1, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    y, x = torch.meshgrid(torch.arange(8), torch.arange(8), indexing="ij")
    pred = target + 0.2 + 0.1 * ((-1.0) ** (x + y)).expand(1, 3, 8, 8)
    assert FocalFrequencyLoss(alpha=2.0)(pred, target).item() == pytest.approx(0.04 + 0.1 ** 4 / 0.04, rel=1e-4)


def test_focal_frequency_at_alpha_zero_is_the_mean_squared_error():
    # every weight is 1, and the orthonormal DFT keeps the sum of squares (Parseval)
    generator = torch.Generator().manual_seed(0)
    pred, target = torch.rand(2, 3, 8, 8, generator=generator), torch.rand(2, 3, 8, 8, generator=generator)
    expected = (pred - target).square().mean().item()
    assert FocalFrequencyLoss(alpha=0.0)(pred, target).item() == pytest.approx(expected, rel=1e-5)


def test_focal_frequency_rejects_a_negative_alpha():
    with pytest.raises(ValueError, match=r"^FocalFrequencyLoss alpha must be >= 0, got -0.5$"):
        FocalFrequencyLoss(alpha=-0.5)


def test_focal_frequency_weights_are_normalised_per_image_and_channel():
    # constant shifts (only DC): each image's and channel's DC weight is 1, however small its error
    shifts = torch.tensor([[0.2, 0.1, 0.1], [0.1, 0.1, 0.1]]).view(2, 3, 1, 1)
    target = torch.rand(2, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    expected = shifts.square().mean().item()
    assert FocalFrequencyLoss()(target + shifts, target).item() == pytest.approx(expected, rel=1e-4)


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


@pytest.mark.parametrize("height, width", [(10, 11), (11, 10)])
def test_ssim_rejects_an_image_smaller_than_its_window_naming_its_size(height, width):
    with pytest.raises(ValueError, match=rf"^ssim needs images of at least 11x11, got \({height}, {width}\)$"):
        ssim(torch.rand(1, 3, height, width), torch.rand(1, 3, height, width))


def test_ssim_of_an_image_the_size_of_its_window_is_one_value_per_image():
    generator = torch.Generator().manual_seed(0)
    pred, target = torch.rand(2, 3, 11, 11, generator=generator), torch.rand(2, 3, 11, 11, generator=generator)
    per_image = ssim(pred, target, reduction="none")
    assert per_image.shape == (2,) and torch.isfinite(per_image).all()
    assert ssim(target, target).item() == pytest.approx(1.0, abs=1e-5)
    with pytest.raises(ValueError, match="^reduction must be 'mean' or 'none', got 'sum'$"):
        ssim(pred, target, reduction="sum")


def test_ssim_of_six_channels_is_the_mean_of_its_two_halves():
    # any channel count: per-channel SSIM averaged over the channels
    generator = torch.Generator().manual_seed(0)
    pred, target = torch.rand(1, 6, 12, 12, generator=generator), torch.rand(1, 6, 12, 12, generator=generator)
    halves = (ssim(pred[:, :3], target[:, :3]) + ssim(pred[:, 3:], target[:, 3:])) / 2
    assert ssim(pred, target).item() == pytest.approx(halves.item(), abs=1e-6)


def test_edge_loss_saves_no_state():
    # its Sobel kernels are constants: a checkpoint carries none of them
    assert EdgeLoss().state_dict() == {}
