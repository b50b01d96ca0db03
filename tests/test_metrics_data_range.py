"""utils/metrics.py at a data range other than 1: PSNR, SSIM and masked PSNR of 8-bit-scaled images
equal scikit-image's with data_range=255 (every caller uses 1, where a missing square or an
unscaled SSIM constant goes unnoticed)."""
import pytest
import torch
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from utils.metrics import masked_psnr, psnr, ssim


def pair_255(seed=0, shape=(2, 3, 24, 30), high=255.0, noise=12.0):
    """A clean image with values in [0, high] of a 0..255 scale and a noisy copy."""
    generator = torch.Generator().manual_seed(seed)
    clean = torch.rand(shape, generator=generator) * high
    noisy = (clean + noise * torch.randn(shape, generator=generator)).clamp(0, 255)
    return noisy, clean


def hwc(image):
    return image.permute(1, 2, 0).double().numpy()


def test_psnr_at_data_range_255_equals_scikit_image():
    pred, target = pair_255()
    ours = psnr(pred, target, data_range=255.0, reduction="none")
    for index in range(pred.shape[0]):
        reference = peak_signal_noise_ratio(hwc(target[index]), hwc(pred[index]), data_range=255.0)
        assert ours[index].item() == pytest.approx(reference, abs=1e-3)
    # the same photos on a [0, 1] scale have the same PSNR
    assert psnr(pred / 255, target / 255).item() == pytest.approx(ours.mean().item(), abs=1e-3)


@pytest.mark.parametrize("high, noise", [(255.0, 12.0), (6.0, 1.0)], ids=["full-range", "dark-low-contrast"])
def test_ssim_at_data_range_255_equals_scikit_image(high, noise):
    # dark, low-contrast images: local means and variances are of the order of C1, C2 = (0.01 L)^2,
    # (0.03 L)^2, so SSIM depends on the constants being scaled by the data range
    pred, target = pair_255(seed=1, high=high, noise=noise)
    ours = ssim(pred, target, data_range=255.0, reduction="none")
    for index in range(pred.shape[0]):
        reference = structural_similarity(hwc(pred[index]), hwc(target[index]), gaussian_weights=True, sigma=1.5,
                                          use_sample_covariance=False, data_range=255.0, channel_axis=-1)
        assert ours[index].item() == pytest.approx(reference, abs=1e-4)
    assert ssim(pred / 255, target / 255).item() == pytest.approx(ours.mean().item(), abs=1e-4)


def test_masked_psnr_at_data_range_255_over_a_region_equals_scikit_image_on_that_region():
    pred, target = pair_255(seed=2)
    mask = torch.zeros(2, 1, 24, 30, dtype=torch.bool)
    mask[..., 4:12, 6:20] = True
    ours = masked_psnr(pred, target, mask, data_range=255.0, reduction="none")
    for index in range(pred.shape[0]):
        region = (slice(None), slice(4, 12), slice(6, 20))
        reference = peak_signal_noise_ratio(hwc(target[index][region]), hwc(pred[index][region]), data_range=255.0)
        assert ours[index].item() == pytest.approx(reference, abs=1e-3)


def test_masked_psnr_of_a_fractionally_weighted_pixel_is_that_pixels_psnr():
    # one pixel at weight 0.1: the weighted MSE is that pixel's squared error (mean over the channels)
    pred, target = torch.zeros(1, 3, 4, 4), torch.zeros(1, 3, 4, 4)
    pred[0, :, 1, 2] = 0.1
    pred[0, :, 0, 0] = 0.9  # outside the region: must not count
    mask = torch.zeros(1, 1, 4, 4)
    mask[0, 0, 1, 2] = 0.1
    assert masked_psnr(pred, target, mask).item() == pytest.approx(20.0, abs=1e-4)
    assert masked_psnr(pred, pred, mask).item() == pytest.approx(100.0)  # exact: capped, not inf


def test_masked_psnr_mean_skips_images_without_the_region():
    pred, target = torch.zeros(3, 3, 4, 4), torch.zeros(3, 3, 4, 4)
    pred[0] += 0.1
    pred[2] += 0.01
    mask = torch.ones(3, 1, 4, 4, dtype=torch.bool)
    mask[1] = False
    per_image = masked_psnr(pred, target, mask, reduction="none")
    assert per_image[0].item() == pytest.approx(20.0, abs=1e-4) and per_image[2].item() == pytest.approx(40.0, abs=1e-4)
    assert torch.isnan(per_image[1])
    assert masked_psnr(pred, target, mask).item() == pytest.approx(30.0, abs=1e-4)
    assert torch.isnan(masked_psnr(pred, target, torch.zeros_like(mask)))


@pytest.mark.parametrize("shape", [(2, 4, 4), (2, 3, 4, 4), (1, 1, 4, 4), (2, 1, 3, 4), (2, 1, 4, 3)],
                         ids=["3d", "channels", "batch", "height", "width"])
def test_masked_psnr_names_the_expected_mask_shape(shape):
    pred = torch.zeros(2, 3, 4, 4)
    with pytest.raises(ValueError, match=r"mask must have shape \(N, 1, H, W\) = \(2, 1, 4, 4\), got"):
        masked_psnr(pred, pred, torch.ones(shape))
