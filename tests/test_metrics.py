import numpy as np
import pytest
import torch
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from utils.metrics import l1, psnr, ssim


def _pair(seed=0, shape=(2, 3, 40, 52)):
    generator = torch.Generator().manual_seed(seed)
    clean = torch.rand(shape, generator=generator)
    noisy = (clean + 0.08 * torch.randn(shape, generator=generator)).clamp(0, 1)
    return noisy, clean


def _hwc(t):
    return t.permute(1, 2, 0).numpy().astype(np.float64)


def test_psnr_and_ssim_match_scikit_image():
    pred, target = _pair()
    ours_psnr = psnr(pred, target, reduction="none")
    ours_ssim = ssim(pred, target, reduction="none")
    for i in range(pred.shape[0]):
        ref_psnr = peak_signal_noise_ratio(_hwc(target[i]), _hwc(pred[i]), data_range=1.0)
        ref_ssim = structural_similarity(_hwc(pred[i]), _hwc(target[i]), gaussian_weights=True, sigma=1.5,
                                         use_sample_covariance=False, data_range=1.0, channel_axis=-1)
        assert ours_psnr[i].item() == pytest.approx(ref_psnr, abs=1e-3)
        assert ours_ssim[i].item() == pytest.approx(ref_ssim, abs=1e-3)
    assert psnr(pred, target).item() == pytest.approx(ours_psnr.mean().item())


def test_known_values():
    target = torch.zeros(1, 3, 16, 16)
    pred = torch.full_like(target, 0.1)
    assert psnr(pred, target).item() == pytest.approx(20.0, abs=1e-4)  # MSE 0.01
    assert l1(pred, target).item() == pytest.approx(0.1)
    assert ssim(target, target).item() == pytest.approx(1.0, abs=1e-6)
    assert psnr(target, target).item() == pytest.approx(100.0)


def test_ssim_is_differentiable_and_rejects_tiny_images():
    pred, target = _pair(shape=(1, 3, 16, 16))
    pred.requires_grad_(True)
    ssim(pred, target).backward()
    assert torch.isfinite(pred.grad).all() and pred.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="at least 11x11"):
        ssim(torch.rand(1, 3, 8, 8), torch.rand(1, 3, 8, 8))


def test_l1_is_the_mean_absolute_error_of_each_image():
    target = torch.full((2, 3, 4, 4), 0.1)
    pred = target + torch.tensor([0.2, -0.4]).view(2, 1, 1, 1)
    assert l1(pred, target, reduction="none").tolist() == pytest.approx([0.2, 0.4])
    assert l1(pred, target).item() == pytest.approx(0.3)
