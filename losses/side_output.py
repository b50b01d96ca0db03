"""Auxiliary loss on a low-resolution side output (DarkIR's ``side_out`` head at the bottleneck)."""
import torch
import torch.nn.functional as F
from torch import nn


class SideOutputLoss(nn.Module):
    """L = mean |side - A(target)|, A = area-average downscaling of the target to the side output's size.

    DarkIR's ``forward(x, side_loss=True)`` also returns an image predicted from the bottleneck
    features at 1/8 scale; supervising it with the target makes the low-resolution path carry the
    global tone and colour (the official training's optional "enhance" loss). Area averaging is the
    mean of each 8x8 block when the crop is a multiple of 8; the official code samples the nearest
    pixel instead, which aliases textured targets.
    """

    def forward(self, side: torch.Tensor, target: torch.Tensor, inp: torch.Tensor = None) -> torch.Tensor:
        small_target = F.interpolate(target.float(), size=side.shape[-2:], mode="area")
        return (side.float() - small_target).abs().mean()
