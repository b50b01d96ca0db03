"""Image-quality metrics: the one place PSNR, SSIM and L1 are defined.

All functions take float tensors in [0, 1] of shape (N, C, H, W) and return the batch mean
(``reduction='mean'``) or one value per image (``reduction='none'``). They are differentiable, so
the SSIM loss reuses :func:`ssim`. Conventions match scikit-image's reference implementations
(``peak_signal_noise_ratio(data_range=1)``, ``structural_similarity(gaussian_weights=True, sigma=1.5,
use_sample_covariance=False, data_range=1, channel_axis=-1)``) to 1e-3, which the tests check.
"""
import functools

import torch
import torch.nn.functional as F

SSIM_K1, SSIM_K2 = 0.01, 0.03
SSIM_SIGMA = 1.5
SSIM_WINDOW = 11  # scikit-image: 2 * int(truncate * sigma + 0.5) + 1 with truncate=3.5


def _reduce(per_image: torch.Tensor, reduction: str) -> torch.Tensor:
    if reduction == "mean":
        return per_image.mean()
    if reduction == "none":
        return per_image
    raise ValueError(f"reduction must be 'mean' or 'none', got {reduction!r}")


def l1(pred: torch.Tensor, target: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """Mean absolute error per image."""
    return _reduce((pred.float() - target.float()).abs().flatten(1).mean(1), reduction)


def psnr(pred: torch.Tensor, target: torch.Tensor, data_range: float = 1.0,
         reduction: str = "mean") -> torch.Tensor:
    """PSNR in dB per image: 10 log10(data_range^2 / MSE), MSE over all pixels and channels.

    A perfect match is capped at 100 dB (MSE floored at 1e-10) instead of returning inf.
    """
    mse = (pred.float() - target.float()).pow(2).flatten(1).mean(1)
    return _reduce(10.0 * torch.log10(data_range ** 2 / mse.clamp_min(1e-10)), reduction)


@functools.lru_cache(maxsize=8)
def _gaussian_kernel(channels: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    # Cached per (channels, device, dtype): it is static, so it is built once rather than per call.
    coords = torch.arange(SSIM_WINDOW, dtype=torch.float64) - SSIM_WINDOW // 2
    g = torch.exp(-(coords ** 2) / (2 * SSIM_SIGMA ** 2))
    g = g / g.sum()
    kernel = torch.outer(g, g).to(device=device, dtype=dtype)
    return kernel.expand(channels, 1, SSIM_WINDOW, SSIM_WINDOW).contiguous()


def ssim(pred: torch.Tensor, target: torch.Tensor, data_range: float = 1.0,
         reduction: str = "mean") -> torch.Tensor:
    """Structural similarity per image (Wang et al. 2004), averaged over channels and pixels.

    SSIM = ((2 mu_x mu_y + C1)(2 s_xy + C2)) / ((mu_x^2 + mu_y^2 + C1)(s_x^2 + s_y^2 + C2)) with
    local statistics from an 11x11 Gaussian window (sigma 1.5), C1 = (0.01 L)^2, C2 = (0.03 L)^2.
    Like scikit-image, only windows fully inside the image count (a border of 5 pixels is
    excluded from the mean), so images must be at least 11x11.
    """
    if pred.shape[-1] < SSIM_WINDOW or pred.shape[-2] < SSIM_WINDOW:
        raise ValueError(f"ssim needs images of at least {SSIM_WINDOW}x{SSIM_WINDOW}, got {tuple(pred.shape[-2:])}")
    x, y = pred.float(), target.float()
    channels = x.shape[1]
    kernel = _gaussian_kernel(channels, x.device, x.dtype)
    # One grouped convolution computes all five local moments at once.
    stacked = torch.cat([x, y, x * x, y * y, x * y], dim=1)
    moments = F.conv2d(stacked, kernel.repeat(5, 1, 1, 1), groups=5 * channels)
    mu_x, mu_y, xx, yy, xy = moments.chunk(5, dim=1)
    var_x, var_y, cov_xy = xx - mu_x ** 2, yy - mu_y ** 2, xy - mu_x * mu_y
    c1, c2 = (SSIM_K1 * data_range) ** 2, (SSIM_K2 * data_range) ** 2
    ssim_map = ((2 * mu_x * mu_y + c1) * (2 * cov_xy + c2)) / (
        (mu_x ** 2 + mu_y ** 2 + c1) * (var_x + var_y + c2))
    return _reduce(ssim_map.flatten(1).mean(1), reduction)


def masked_psnr(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor, data_range: float = 1.0,
                reduction: str = "mean") -> torch.Tensor:
    """PSNR in dB over a region of each image: 10 log10(data_range^2 / MSE_m) with the mask-weighted

        MSE_m = sum(m * (pred - target)^2) / (C * sum(m))

    ``mask`` is (N, 1, H, W), boolean or weights in [0, 1] (broadcast over the channels). An image
    whose mask is empty gets NaN (the region is not there); ``reduction='mean'`` averages over the
    images that have the region (NaN if none has). Like :func:`psnr`, MSE is floored at 1e-10.
    """
    if mask.ndim != 4 or mask.shape[1] != 1 or mask.shape[0] != pred.shape[0] or mask.shape[-2:] != pred.shape[-2:]:
        raise ValueError(f"mask must have shape (N, 1, H, W) = {(pred.shape[0], 1, *pred.shape[-2:])}, "
                         f"got {tuple(mask.shape)}")
    weights = mask.float()
    squared_error = (pred.float() - target.float()).pow(2)
    weight_sum = weights.flatten(1).sum(1) * pred.shape[1]
    mse = (weights * squared_error).flatten(1).sum(1) / weight_sum.clamp_min(1e-12)
    per_image = 10.0 * torch.log10(data_range ** 2 / mse.clamp_min(1e-10))
    per_image = torch.where(weight_sum > 0, per_image, torch.full_like(per_image, float("nan")))
    return per_image.nanmean() if reduction == "mean" else _reduce(per_image, reduction)
