"""Differentiable, numerically safe colour conversions shared by losses, features and evaluation.

Inputs are sRGB-encoded float tensors (N, 3, H, W) in [0, 1]. Every function is finite (values and
gradients) at pure black, pure white and fully saturated colours, also when called under fp16/bf16
autocast: they compute in fp32.
"""
import torch

# Rec. 709 / sRGB luma weights.
LUMA_WEIGHTS = (0.2126, 0.7152, 0.0722)


def luminance(rgb: torch.Tensor) -> torch.Tensor:
    """Luma Y = 0.2126 R + 0.7152 G + 0.0722 B on the encoded values, shape (N, 1, H, W)."""
    r, g, b = rgb.float().unbind(1)
    return (LUMA_WEIGHTS[0] * r + LUMA_WEIGHTS[1] * g + LUMA_WEIGHTS[2] * b).unsqueeze(1)


def rgb_to_hsv(rgb: torch.Tensor, eps: float = 1e-3) -> torch.Tensor:
    """HSV with hue in [0, 1) (fraction of a turn), saturation and value in [0, 1].

    S = (max - min) / max(max, eps): the floor keeps the gradient bounded near black, where the
    hue and saturation of a colour are undefined (both are 0 there). Hue is piecewise as in
    OpenCV/scikit-image; its gradient is zero for grey pixels.
    """
    rgb = rgb.float()
    value, argmax = rgb.max(dim=1)
    minimum = rgb.min(dim=1).values
    chroma = value - minimum
    saturation = chroma / value.clamp_min(eps)
    r, g, b = rgb.unbind(1)
    safe_chroma = chroma.clamp_min(eps)
    hue_r = torch.remainder((g - b) / safe_chroma, 6.0)
    hue_g = (b - r) / safe_chroma + 2.0
    hue_b = (r - g) / safe_chroma + 4.0
    hue = torch.where(argmax == 0, hue_r, torch.where(argmax == 1, hue_g, hue_b)) / 6.0
    hue = torch.where(chroma > eps, hue, torch.zeros_like(hue))
    return torch.stack([hue, saturation, value], dim=1)


def chroma_plane(rgb: torch.Tensor) -> torch.Tensor:
    """The hexagonal chroma coordinates (alpha, beta) of HSV, shape (N, 2, H, W).

    alpha = R - (G + B) / 2, beta = sqrt(3)/2 (G - B). Hue is the angle of this vector and chroma its
    length, so comparing these two coordinates compares hue weighted by chroma without the angle's
    wrap-around or its undefined value at grey: smooth everywhere, unlike atan2.
    """
    r, g, b = rgb.float().unbind(1)
    return torch.stack([r - 0.5 * (g + b), 0.8660254037844386 * (g - b)], dim=1)
