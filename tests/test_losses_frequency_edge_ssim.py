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


def test_edge_loss_saves_no_state():
    # its Sobel kernels are constants: a checkpoint carries none of them
    assert EdgeLoss().state_dict() == {}
