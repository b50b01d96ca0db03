"""Differentiable colour histograms and a histogram-matching loss.

L1 regresses towards the conditional mean, which mutes colours; comparing per-channel value
distributions asks for the target's spread of values instead (how many bright, saturated pixels).
"""
import math

import torch
from torch import nn

HISTOGRAM_BINS = 64


def soft_histogram(values: torch.Tensor, bins: int = HISTOGRAM_BINS, sigma: float = None,
                   weights: torch.Tensor = None) -> torch.Tensor:
    """Per-image, per-channel histograms of values in [0, 1] with a triangular kernel: (N, C, bins).

    Bin k has centre c_k = (k + 0.5) / bins. A value v adds max(0, 1 - |v - c_k| / sigma) to bin k,
    renormalised so each value adds exactly its weight in total; ``sigma`` defaults to the bin width,
    which is linear interpolation between the two nearest centres. Values are clamped to [0, 1].
    ``values`` is (N, C, H, W) (or (N, C, L)); ``weights`` (N, 1, H, W) weighs pixels (a soft
    region mask), default 1. Each histogram is normalised to sum to 1.

    Only the ~2 sigma / bin-width bins a value touches are computed (scatter-add), so memory is O(pixels)
    rather than O(pixels x bins) as with a dense Gaussian kernel; the gradient w.r.t. a value is the
    kernel's slope, non-zero wherever the value sits between two bin centres.
    """
    bin_width = 1.0 / bins
    sigma = bin_width if sigma is None else float(sigma)
    if sigma <= 0:
        raise ValueError(f"soft_histogram sigma must be > 0, got {sigma}")
    batch, channels = values.shape[:2]
    values = values.float().reshape(batch, channels, -1).clamp(0.0, 1.0)
    if weights is None:
        weights = torch.ones_like(values[:, :1])
    weights = weights.float().reshape(batch, 1, -1).expand_as(values)
    position = values / bin_width - 0.5  # in units of bins, bin k's centre at k
    reach = math.ceil(sigma / bin_width)
    nearest_left = position.floor().detach()
    indices, kernels = [], []
    for offset in range(1 - reach, reach + 1):
        index = nearest_left + offset
        kernel = (1.0 - (position - index).abs() * (bin_width / sigma)).clamp_min(0.0)
        inside = (index >= 0) & (index < bins)
        indices.append(index.clamp(0, bins - 1).long())
        kernels.append(kernel * inside)
    # Kernel mass that falls outside [0, 1] is put back by the renormalisation.
    total = sum(kernels).clamp_min(1e-12)
    histogram = values.new_zeros(batch, channels, bins)
    for index, kernel in zip(indices, kernels):
        histogram = histogram.scatter_add(2, index, kernel / total * weights)
    return histogram / histogram.sum(dim=2, keepdim=True).clamp_min(1e-12)


class HistogramLoss(nn.Module):
    """L = mean over (n, c) of sum_k |CDF_pred(k) - CDF_target(k)| / bins.

    CDFs of the :func:`soft_histogram` of each image channel. This is the 1-D earth mover's
    (Wasserstein-1) distance between the two value distributions, in value units: moving every value
    of a channel by d costs d. ``forward(..., weights=m)`` compares the distributions inside a soft
    region m (N, 1, H, W) only (used for bright regions).
    """

    def __init__(self, bins: int = HISTOGRAM_BINS, sigma: float = None):
        super().__init__()
        self.bins, self.sigma = bins, sigma

    def forward(self, pred, target, inp=None, weights=None):
        pred_cdf = soft_histogram(pred, self.bins, self.sigma, weights).cumsum(dim=2)
        target_cdf = soft_histogram(target, self.bins, self.sigma, weights).cumsum(dim=2)
        return (pred_cdf - target_cdf).abs().sum(dim=2).mean() / self.bins
