"""Zone-aware loss: windows, shadows and midtones of the as-shot photo each get their own weight, and
each zone's overall exposure must match the edit's.

The catalog's analysis of the edited targets found that blown-out windows only need a small
brightness change (about -7 of 255 levels on average), not aggressive darkening. A per-pixel L1 does
not see a zone-wide drift (every window pixel a little too dark); the zone brightness term does.
"""
import torch
from torch import nn

from .colorspace import luminance
from .window import WINDOW_SOFTNESS, WINDOW_THRESHOLD, overexposure_mask

SHADOW_THRESHOLD = 0.25
WINDOW_WEIGHT, SHADOW_WEIGHT, MIDTONE_WEIGHT = 2.0, 1.5, 1.0
BRIGHTNESS_WEIGHT = 1.0


def hdr_zone_masks(inp: torch.Tensor, window_threshold: float = WINDOW_THRESHOLD,
                   shadow_threshold: float = SHADOW_THRESHOLD, softness: float = WINDOW_SOFTNESS) -> torch.Tensor:
    """Soft (window, shadow, midtone) masks of the input, (N, 3, H, W), summing to 1 per pixel.

    window = :func:`losses.window.overexposure_mask`; shadow = sigmoid((t_s - Y) / softness) (1 - window);
    midtone = 1 - window - shadow, with Y the input's luma.
    """
    window = overexposure_mask(inp, window_threshold, softness)
    shadow = torch.sigmoid((shadow_threshold - luminance(inp)) / softness) * (1.0 - window)
    return torch.cat([window, shadow, 1.0 - window - shadow], dim=1)


class ZoneAwareLoss(nn.Module):
    """L = sum_z w_z (E_z + beta B_z) over z in (windows, shadows, midtones).

    E_z = sum_p m_zp |pred_p - target_p| / (C max(sum_p m_zp, 1)): mean absolute error in zone z (batch);
    B_z = mean_n |Ybar_nz(pred) - Ybar_nz(target)|: the zone's mean luma per image,
    Ybar_nz(x) = sum_p m_zp Y_p(x) / max(sum_p m_zp, 1), so a zone-wide brightness drift costs its size.
    m_z = :func:`hdr_zone_masks` of the input; beta = ``brightness_weight``.
    """

    def __init__(self, window_weight: float = WINDOW_WEIGHT, shadow_weight: float = SHADOW_WEIGHT,
                 midtone_weight: float = MIDTONE_WEIGHT, brightness_weight: float = BRIGHTNESS_WEIGHT,
                 window_threshold: float = WINDOW_THRESHOLD, shadow_threshold: float = SHADOW_THRESHOLD,
                 softness: float = WINDOW_SOFTNESS):
        super().__init__()
        if not 0 < shadow_threshold < window_threshold < 1:
            raise ValueError("ZoneAwareLoss needs 0 < shadow_threshold < window_threshold < 1, "
                             f"got {shadow_threshold} and {window_threshold}")
        if softness <= 0:
            raise ValueError(f"ZoneAwareLoss softness must be > 0, got {softness}")
        self.window_threshold, self.shadow_threshold, self.softness = window_threshold, shadow_threshold, softness
        self.brightness_weight = brightness_weight
        self.register_buffer("zone_weights", torch.tensor([window_weight, shadow_weight, midtone_weight]),
                             persistent=False)

    def forward(self, pred, target, inp):
        masks = hdr_zone_masks(inp, self.window_threshold, self.shadow_threshold, self.softness)
        abs_error = (pred.float() - target.float()).abs().mean(dim=1, keepdim=True)
        zone_errors = (masks * abs_error).sum(dim=(0, 2, 3)) / masks.sum(dim=(0, 2, 3)).clamp_min(1.0)
        image_zone_area = masks.sum(dim=(2, 3)).clamp_min(1.0)
        pred_brightness = (masks * luminance(pred)).sum(dim=(2, 3)) / image_zone_area
        target_brightness = (masks * luminance(target)).sum(dim=(2, 3)) / image_zone_area
        brightness_errors = (pred_brightness - target_brightness).abs().mean(dim=0)
        return (self.zone_weights * (zone_errors + self.brightness_weight * brightness_errors)).sum()
