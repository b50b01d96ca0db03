"""Image-quality metrics in one place: PSNR, masked PSNR, L1 and SSIM (defined in :mod:`losses.ssim`).

All functions take float tensors in [0, 1] of shape (N, C, H, W) and return the batch mean
(``reduction='mean'``) or one value per image (``reduction='none'``). :func:`ssim` is the SSIM maths
of :mod:`losses.ssim`, which the SSIM loss uses too. Conventions match scikit-image's reference
implementations (``peak_signal_noise_ratio(data_range=1)``, ``structural_similarity(gaussian_weights=True,
sigma=1.5, use_sample_covariance=False, data_range=1, channel_axis=-1)``) to 1e-3, which the tests check.
"""
import torch

from losses.ssim import reduce_per_image, ssim

__all__ = ["l1", "masked_psnr", "psnr", "ssim"]


def l1(pred: torch.Tensor, target: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """Mean absolute error per image."""
    return reduce_per_image((pred.float() - target.float()).abs().flatten(1).mean(1), reduction)


def psnr(pred: torch.Tensor, target: torch.Tensor, data_range: float = 1.0,
         reduction: str = "mean") -> torch.Tensor:
    """PSNR in dB per image: 10 log10(data_range^2 / MSE), MSE over all pixels and channels.

    A perfect match is capped at 100 dB (MSE floored at 1e-10) instead of returning inf.
    """
    mse = (pred.float() - target.float()).pow(2).flatten(1).mean(1)
    return reduce_per_image(10.0 * torch.log10(data_range ** 2 / mse.clamp_min(1e-10)), reduction)


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
    return per_image.nanmean() if reduction == "mean" else reduce_per_image(per_image, reduction)
