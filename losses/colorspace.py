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


# sRGB primaries under the D65 white point (IEC 61966-2-1): linear RGB -> CIE XYZ.
XYZ_FROM_LINEAR_RGB = ((0.412453, 0.357580, 0.180423),
                       (0.212671, 0.715160, 0.072169),
                       (0.019334, 0.119193, 0.950227))
D65_WHITE = (0.95047, 1.0, 1.08883)  # CIE XYZ of the D65 white, 2-degree observer
_LAB_DELTA = 6.0 / 29.0  # CIELAB's switch point between the cube root and its linear segment


def srgb_to_linear(rgb: torch.Tensor) -> torch.Tensor:
    """Undo the sRGB transfer curve: c / 12.92 for c <= 0.04045, ((c + 0.055) / 1.055)^2.4 above.

    The linear segment also covers values below 0 (a network's unclamped output), and the power
    branch only ever sees c >= 0.04045, so value and gradient are finite for any input.
    """
    rgb = rgb.float()
    power_branch = ((rgb.clamp_min(0.04045) + 0.055) / 1.055) ** 2.4
    return torch.where(rgb > 0.04045, power_branch, rgb / 12.92)


def _lab_companding(t: torch.Tensor) -> torch.Tensor:
    """CIELAB's f(t) = t^(1/3) above (6/29)^3, else t / (3 (6/29)^2) + 4/29 (finite slope at 0)."""
    threshold = _LAB_DELTA ** 3
    cube_root = t.clamp_min(threshold) ** (1.0 / 3.0)
    return torch.where(t > threshold, cube_root, t / (3 * _LAB_DELTA ** 2) + 4.0 / 29.0)


def rgb_to_lab(rgb: torch.Tensor) -> torch.Tensor:
    """sRGB in [0, 1] -> CIELAB (D65, 2-degree observer), (N, 3, H, W) with L in [0, 100].

    linear = :func:`srgb_to_linear`; XYZ = M linear (sRGB/D65 matrix); with f the CIELAB companding
    (its standard linear segment near 0, where the cube root's slope is infinite):
    L = 116 f(Y/Yn) - 16, a = 500 (f(X/Xn) - f(Y/Yn)), b = 200 (f(Y/Yn) - f(Z/Zn)).
    Matches skimage.color.rgb2lab; written out here because the field's converters (skimage, OpenCV)
    are not differentiable. Element-wise fp32 arithmetic, so autocast leaves it in fp32.
    """
    linear = srgb_to_linear(rgb).unbind(1)
    xyz = [sum(coefficient * channel for coefficient, channel in zip(row, linear)) / white
           for row, white in zip(XYZ_FROM_LINEAR_RGB, D65_WHITE)]
    fx, fy, fz = (_lab_companding(t) for t in xyz)
    return torch.stack([116.0 * fy - 16.0, 500.0 * (fx - fy), 200.0 * (fy - fz)], dim=1)


def delta_e76(lab_a: torch.Tensor, lab_b: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """CIE 1976 colour difference per pixel, (N, H, W): sqrt(dL^2 + da^2 + db^2 + eps^2).

    ``eps`` (in LAB units, far below the just-noticeable difference of ~2.3) keeps the square root's
    gradient finite where the two colours are equal.
    """
    return ((lab_a.float() - lab_b.float()).square().sum(dim=1) + eps ** 2).sqrt()
