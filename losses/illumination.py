"""Illumination consistency: a Retinex model's estimated light-up map should explain, smoothly, how
much brighter (or darker) the target is than the input.

Retinex writes an image as reflectance times illumination, ``I = R * L``. If the edit only relights
the scene, ``T = R * L'``, the ratio ``T / I = L' / L`` is the light-up a Retinex model's estimator
should produce: RetinexFormer / RetinexMamba light the input up as ``I * A`` with ``A = 1 + M`` the
estimator's map (``model(x, return_illumination=True)``). With luma ``Y`` (Rec. 709,
:func:`losses.colorspace.luminance`) and a floor ``eps`` that bounds the ratio in crushed shadows,

    a = log(Y(I * A) + eps) - log(Y(I) + eps)        the log luminance gain the map applies
    b = log(Y(T) + eps)     - log(Y(I) + eps)        the log luminance gain the edit made

    fidelity   = mean |a - b|   (= mean |log(Y(I * A) + eps) - log(Y(T) + eps)|)
    smoothness = mean over horizontal and vertical neighbours of
                 |d a| * exp(-edge_sharpness * |d log(Y(I) + eps)|)
    L = fidelity + smoothness_weight * smoothness

The fidelity term is scale-free (a ratio, in log units: 0.1 is about 10 % brighter) and colour-aware
(``Y(I * A)`` weights each channel's gain by the input's colour). The smoothness term is an
edge-aware total variation of the log gain: the illumination may change across the input's own
edges (a window frame, a lamp shade) but not across flat regions, so the map explains the smooth
relighting and leaves texture and local contrast to the restorer. Computed in fp32; 0 when
``Y(I * A) = Y(T)`` everywhere and the gain is constant.
"""
import torch
from torch import nn

from .colorspace import luminance

# About 2.5/255: below it an 8-bit input's luma is noise, and the log ratio stays under log(101).
ILLUMINATION_EPS = 1e-2


class IlluminationConsistencyLoss(nn.Module):
    """``forward(light_up, target, inp)``: ``light_up`` (N, 3, H, W) multiplies ``inp``; see the module
    docstring for the formula."""

    def __init__(self, smoothness_weight: float = 0.1, edge_sharpness: float = 10.0, eps: float = ILLUMINATION_EPS):
        super().__init__()
        if eps <= 0 or smoothness_weight < 0 or edge_sharpness < 0:
            raise ValueError(f"need eps > 0, smoothness_weight >= 0 and edge_sharpness >= 0; got eps={eps}, "
                             f"smoothness_weight={smoothness_weight}, edge_sharpness={edge_sharpness}")
        self.smoothness_weight, self.edge_sharpness, self.eps = smoothness_weight, edge_sharpness, eps

    def forward(self, light_up: torch.Tensor, target: torch.Tensor, inp: torch.Tensor) -> torch.Tensor:
        if light_up.shape != inp[:, :3].shape:
            raise ValueError(f"light-up map {tuple(light_up.shape)} must match the input's RGB "
                             f"{tuple(inp[:, :3].shape)}")
        with torch.autocast(device_type=light_up.device.type, enabled=False):
            rgb = inp[:, :3].float()
            # Y(I * A) can go negative for an untrained map: clamp at 0 so the log stays finite.
            lit = torch.log(luminance(rgb * light_up.float()).clamp(min=0) + self.eps)
            log_input = torch.log(luminance(rgb) + self.eps)
            fidelity = (lit - torch.log(luminance(target) + self.eps)).abs().mean()
            if self.smoothness_weight == 0:
                return fidelity
            gain = lit - log_input
            smoothness = 0.0
            for dim in (-1, -2):
                weight = torch.exp(-self.edge_sharpness * log_input.diff(dim=dim).abs())
                smoothness = smoothness + (gain.diff(dim=dim).abs() * weight).mean()
            return fidelity + self.smoothness_weight * smoothness / 2
