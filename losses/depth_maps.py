"""Depth-map maths shared by the depth model (``models.depth``) and the input features (``data.features``).

Convention, as for every depth map in the project (MiDaS and proxy alike): (N, 1, H, W) in [0, 1]
per image, **0 = near, 1 = far**.
"""
import torch

# The smallest depth range a map is divided by: a (near) constant map normalises to 0, not NaN.
DEPTH_RANGE_EPS = 1e-6


def normalize_depth(depth: torch.Tensor, from_disparity: bool = False) -> torch.Tensor:
    """Per-image min-max normalisation of a depth map to [0, 1] with 0 = near, 1 = far.

    depth: (N, 1, H, W). With ``from_disparity=True`` the input is inverse depth (disparity, large =
    near), which is what MiDaS / DPT models predict; it is flipped to ``max - d`` before scaling.
    MiDaS disparity is only defined up to an unknown scale and shift, so flipping it (rather than
    taking 1 / d) is the meaningful way to get a far-is-large ordering. A constant map gives 0.

    Returns (N, 1, H, W) in [0, 1].
    """
    if depth.ndim != 4 or depth.shape[1] != 1:
        raise ValueError(f"depth must have shape (N, 1, H, W), got {tuple(depth.shape)}")
    oriented = -depth if from_disparity else depth
    low = oriented.amin(dim=(2, 3), keepdim=True)
    high = oriented.amax(dim=(2, 3), keepdim=True)
    return ((oriented - low) / (high - low).clamp_min(DEPTH_RANGE_EPS)).clamp(0.0, 1.0)
