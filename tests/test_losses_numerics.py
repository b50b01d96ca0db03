"""Every loss of losses/ beyond the core ones (tests/test_losses_core.py): finite values and gradients at
black, white and saturated extremes, and fp32 results under fp16/bf16 autocast."""
import pytest
import torch

from losses.bright_color import BrightChromaLoss, BrightHistogramLoss, BrightHueLoss, BrightRGBLoss
from losses.color_angle import ColorConsistencyLoss
from losses.delta import DeltaAwareLoss
from losses.direction import ColorDirectionLoss
from losses.edge import EdgeLoss
from losses.frequency import FocalFrequencyLoss
from losses.histogram import HistogramLoss
from losses.lab import DeltaELoss, MultiScaleColorLoss
from losses.luminance_attention import LuminanceAttentionLoss
from losses.structural import SSIMLoss
from losses.zone_aware import ZoneAwareLoss
from losses.zones import AdaptiveZoneLoss
from tests.conftest import constant


EXTREMES = {
    "black": constant([0.0, 0.0, 0.0]),
    "white": constant([1.0, 1.0, 1.0]),
    "red": constant([1.0, 0.0, 0.0]),
    "blue": constant([0.0, 0.0, 1.0]),
}


def plain_losses():
    return [FocalFrequencyLoss(), FocalFrequencyLoss(alpha=2.0, log_matrix=True), HistogramLoss(bins=16),
            LuminanceAttentionLoss(), ZoneAwareLoss(), DeltaELoss(), MultiScaleColorLoss(scales=(1, 2, 4)),
            ColorConsistencyLoss(), BrightHueLoss(), BrightChromaLoss(), BrightRGBLoss(), BrightHistogramLoss()]


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


EXTREMES_16 = {
    "black": torch.zeros(1, 3, 16, 16),
    "white": torch.ones(1, 3, 16, 16),
    "red": torch.tensor([1.0, 0.0, 0.0]).view(1, 3, 1, 1).expand(1, 3, 16, 16).clone(),
    "blue": torch.tensor([0.0, 0.0, 1.0]).view(1, 3, 1, 1).expand(1, 3, 16, 16).clone(),
}
# classes, built inside each test: mutation testing cannot test constructors run at this file's import
MASKED_AND_STRUCTURAL_LOSSES = [DeltaAwareLoss, AdaptiveZoneLoss, ColorDirectionLoss, EdgeLoss, SSIMLoss]


# --------------------------------------------------------------------------- delta, zones, direction, edge, SSIM

@pytest.mark.parametrize("name", list(EXTREMES_16))
@pytest.mark.parametrize("loss_class", MASKED_AND_STRUCTURAL_LOSSES, ids=lambda c: c.__name__)
@pytest.mark.parametrize("target_kind", ["random", "same"])
def test_masked_and_structural_gradients_finite_at_extremes(loss_class, name, target_kind):
    loss = loss_class()
    pred = EXTREMES_16[name].clone().requires_grad_(True)
    target = torch.rand_like(pred) if target_kind == "random" else EXTREMES_16[name]
    value = loss(pred, target, EXTREMES_16[name])
    value.backward()
    assert torch.isfinite(value) and torch.isfinite(pred.grad).all()


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("loss_class", MASKED_AND_STRUCTURAL_LOSSES, ids=lambda c: c.__name__)
def test_finite_fp32_under_autocast(loss_class, dtype):
    loss = loss_class()
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


def test_losses_that_turn_autocast_off_give_their_fp32_value_under_bf16_autocast():
    # their convolutions and FFTs would otherwise run in bf16 (about 3 significant digits)
    generator = torch.Generator().manual_seed(0)
    pred, target, inp = (torch.rand(1, 3, 32, 32, generator=generator) for _ in range(3))
    for loss in [EdgeLoss(), FocalFrequencyLoss(), SSIMLoss()]:
        exact = loss(pred, target, inp)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            mixed = loss(pred, target, inp)
        assert mixed.item() == pytest.approx(exact.item(), rel=1e-5), type(loss).__name__
