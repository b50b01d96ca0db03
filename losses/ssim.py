"""Structural similarity (SSIM, Wang et al. 2004): the one SSIM of the codebase.

Ground-floor maths shared by the SSIM loss (:mod:`losses.structural`) and the metrics
(:mod:`utils.metrics`, evaluate.py). Conventions match scikit-image's ``structural_similarity(
gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=1, channel_axis=-1)`` to
1e-3, which the tests check. Differentiable, so the loss trains through it.
"""
import functools

import torch
import torch.nn.functional as F

SSIM_K1, SSIM_K2 = 0.01, 0.03
SSIM_SIGMA = 1.5
SSIM_WINDOW = 11  # scikit-image: 2 * int(truncate * sigma + 0.5) + 1 with truncate=3.5


def reduce_per_image(per_image: torch.Tensor, reduction: str) -> torch.Tensor:
    """The batch mean of per-image values (``reduction='mean'``) or the values themselves (``'none'``)."""
    if reduction == "mean":
        return per_image.mean()
    if reduction == "none":
        return per_image
    raise ValueError(f"reduction must be 'mean' or 'none', got {reduction!r}")


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
    return reduce_per_image(ssim_map.flatten(1).mean(1), reduction)
