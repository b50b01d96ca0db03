"""Luminance attention loss: L1 weighted by soft exposure-zone maps of the as-shot photo.

Exposure-correction networks (OENet, AGCSNet) attend to each exposure zone separately. Here the
zones are smooth heat maps of the input's luminance -- every pixel belongs to shadows, midtones and
highlights in proportions that vary continuously with its luma -- instead of masks cut at fixed
thresholds, so there is no luma where a pixel jumps from one zone to another. The maps are not
learned: a learnable weighting inside a loss would simply learn to down-weight the hard zones.
"""
import torch
from torch import nn

from .colorspace import luminance

# Zone prototypes on the luma axis (shadows, midtones, highlights) and their spread.
ZONE_CENTRES = (0.0, 0.5, 1.0)
ZONE_WIDTH = 0.2
SHADOW_WEIGHT, MIDTONE_WEIGHT, HIGHLIGHT_WEIGHT = 1.5, 1.0, 2.0


def luminance_attention_maps(inp: torch.Tensor, centres=ZONE_CENTRES, width: float = ZONE_WIDTH) -> torch.Tensor:
    """Soft zone memberships of each pixel, (N, K, H, W), summing to 1 over the K zones (``centres``: a
    sequence or a tensor of the K zone centres on the luma axis).

    a_k = softmax_k(-(Y - c_k)^2 / (2 width^2)) with Y the Rec.709 luma of ``inp`` and c_k the zone
    centres: a normalised Gaussian heat map per zone. With the defaults a pixel of luma 0.5 is 92%
    midtone, one of luma 0.75 is split evenly between midtones and highlights, and one of luma 1 is
    96% highlight.
    """
    luma = luminance(inp)
    centre_values = torch.as_tensor(centres, dtype=luma.dtype, device=luma.device).view(1, -1, 1, 1)
    return torch.softmax(-(luma - centre_values).square() / (2.0 * width ** 2), dim=1)


class LuminanceAttentionLoss(nn.Module):
    """L = sum_k w_k E_k,  E_k = sum_p a_kp |pred_p - target_p| / (C max(sum_p a_kp, 1)).

    a_k = :func:`luminance_attention_maps` of the input; E_k is the mean absolute error inside zone k
    over the batch, so every zone counts by its weight w_k whatever its area (a small blown-out window
    as much as the wall around it). A uniform error e gives L = e sum_k w_k. The floor of one pixel
    makes a zone absent from the batch contribute ~0.
    """

    def __init__(self, shadow_weight: float = SHADOW_WEIGHT, midtone_weight: float = MIDTONE_WEIGHT,
                 highlight_weight: float = HIGHLIGHT_WEIGHT, width: float = ZONE_WIDTH):
        super().__init__()
        if width <= 0:
            raise ValueError(f"LuminanceAttentionLoss width must be > 0, got {width}")
        self.width = width
        self.register_buffer("centres", torch.tensor(ZONE_CENTRES), persistent=False)
        self.register_buffer("zone_weights", torch.tensor([shadow_weight, midtone_weight, highlight_weight]),
                             persistent=False)

    def forward(self, pred, target, inp):
        maps = luminance_attention_maps(inp, self.centres, self.width)
        abs_error = (pred.float() - target.float()).abs().mean(dim=1, keepdim=True)
        zone_errors = (maps * abs_error).sum(dim=(0, 2, 3)) / maps.sum(dim=(0, 2, 3)).clamp_min(1.0)
        return (self.zone_weights * zone_errors).sum()
