"""Focal frequency loss (Jiang et al., "Focal Frequency Loss for Image Reconstruction and Synthesis",
ICCV 2021): a distance between 2-D spectra that focuses on the frequencies the model gets most wrong."""
import torch
from torch import nn


class FocalFrequencyLoss(nn.Module):
    """L = mean over (n, c, u, v) of w(u, v) |F_pred(u, v) - F_target(u, v)|^2.

    F is the orthonormal 2-D DFT of each image channel. The spectrum weight
    w = |F_pred - F_target|^alpha (log(1 + .) of it when ``log_matrix``), divided by its maximum over
    (u, v) per image and channel, so w is in [0, 1] and largest at the hardest frequencies; it is a
    constant (no gradient), as in the paper. Shifting an image by a constant c costs exactly c^2 (all
    the error sits in the DC coefficient, whose weight is 1). The FFT runs in fp32, outside autocast
    (half-precision FFTs lose accuracy and only take power-of-two sizes).
    """

    def __init__(self, alpha: float = 1.0, log_matrix: bool = False):
        super().__init__()
        if alpha < 0:
            raise ValueError(f"FocalFrequencyLoss alpha must be >= 0, got {alpha}")
        self.alpha, self.log_matrix = alpha, log_matrix

    def forward(self, pred, target, inp=None):
        with torch.autocast(device_type=pred.device.type, enabled=False):
            difference = torch.fft.fft2(pred.float() - target.float(), norm="ortho")
        distance = difference.real.square() + difference.imag.square()
        with torch.no_grad():
            weight = distance.sqrt() ** self.alpha
            if self.log_matrix:
                weight = torch.log1p(weight)
            weight = weight / weight.amax(dim=(-2, -1), keepdim=True).clamp_min(1e-12)
        return (weight * distance).mean()
