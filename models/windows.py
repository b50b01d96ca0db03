"""Pieces the window-attention networks (HAT, DAT) share: window partitioning, the shifted-window
attention mask of Swin Transformer, stochastic depth, the pixel-shuffle upsampler, and a small cache
that builds each mask once per feature size.

Facts from the official code: microsoft/Swin-Transformer (the mask: three regions per axis, 0 where
query and key lie in the same region, -100 elsewhere), XPixelGroup/HAT ``hat/archs/hat_arch.py`` and
zhengchen1999/DAT ``basicsr/archs/dat_arch.py`` (the same window order and mask; ``Upsample``).
"""
import math

import torch
import torch.nn as nn

# Logit added between tokens of different regions in a shifted window (the official value).
MASKED_LOGIT = -100.0


def window_partition(x: torch.Tensor, window_h: int, window_w: int) -> torch.Tensor:
    """(B, H, W, C) -> (B * windows, window_h * window_w, C), windows in row-major order per image."""
    batch, height, width, channels = x.shape
    x = x.reshape(batch, height // window_h, window_h, width // window_w, window_w, channels)
    return x.permute(0, 1, 3, 2, 4, 5).reshape(-1, window_h * window_w, channels)


def window_merge(windows: torch.Tensor, window_h: int, window_w: int, height: int, width: int) -> torch.Tensor:
    """Inverse of :func:`window_partition`: (B * windows, window_h * window_w, C) -> (B, H, W, C)."""
    channels = windows.shape[-1]
    x = windows.view(-1, height // window_h, width // window_w, window_h, window_w, channels)
    return x.permute(0, 1, 3, 2, 4, 5).reshape(-1, height, width, channels)


def _region_ids(length: int, window: int, shift: int) -> torch.Tensor:
    """Per position along one axis of a map rolled by -``shift``: 0 before the last window, 1 in the
    last window before the wrapped-around strip, 2 in that strip of ``shift`` positions."""
    ids = torch.zeros(length)
    if shift:  # an axis without shift is one region (the official slices then cover it all)
        ids[length - window:] = 1
        ids[length - shift:] = 2
    return ids


def shifted_window_mask(height: int, width: int, window_h: int, window_w: int, shift_h: int,
                        shift_w: int) -> torch.Tensor:
    """Additive mask (windows, N, N), N = window_h * window_w, of attention in windows of a map
    rolled by (-shift_h, -shift_w): 0 between tokens of the same region, ``MASKED_LOGIT`` otherwise."""
    rows = _region_ids(height, window_h, shift_h)
    cols = _region_ids(width, window_w, shift_w)
    regions = (rows[:, None] * 3 + cols[None, :])[None, :, :, None]
    regions = window_partition(regions, window_h, window_w).squeeze(-1)
    differs = regions[:, None, :] != regions[:, :, None]
    return torch.zeros(differs.shape).masked_fill_(differs, MASKED_LOGIT)


class MaskCache:
    """Masks by (height, width, device): each is built once, however many forwards use that size.

    A few entries suffice (the training crop, a validation size, the inference tiles); the oldest is
    dropped beyond ``max_entries`` so a stream of odd sizes cannot grow memory without bound."""

    def __init__(self, build, max_entries: int = 8):
        self.build, self.max_entries, self.entries = build, max_entries, {}

    def __call__(self, height: int, width: int, device: torch.device):
        key = (height, width, str(device))
        if key not in self.entries:
            if len(self.entries) >= self.max_entries:
                self.entries.pop(next(iter(self.entries)))
            built = self.build(height, width)
            self.entries[key] = tuple(m.to(device) for m in built) if isinstance(built, tuple) else built.to(device)
        return self.entries[key]


class DropPath(nn.Module):
    """Stochastic depth: in training, zero a residual branch per sample with probability ``drop_prob``
    and scale the kept ones by 1 / (1 - drop_prob); the identity in evaluation."""

    def __init__(self, drop_prob: float = 0.0):
        super().__init__()
        self.drop_prob = drop_prob

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.drop_prob == 0.0 or not self.training:
            return x
        keep = 1.0 - self.drop_prob
        mask = x.new_empty((x.shape[0],) + (1,) * (x.dim() - 1)).bernoulli_(keep)
        if keep > 0.0:  # at drop_prob 1 every sample is dropped, and x * 0 / 0 would be NaN
            mask.div_(keep)
        return x * mask


def drop_path_or_identity(drop_prob: float) -> nn.Module:
    return DropPath(drop_prob) if drop_prob > 0.0 else nn.Identity()


class Upsample(nn.Sequential):
    """3x3 conv + PixelShuffle(2) per factor 2 (scale 2**n), or one conv + PixelShuffle(3) (scale 3);
    scale 1 holds no layer, so an x1 state dict has no ``upsample.*`` keys (as in the official code)."""

    def __init__(self, scale: int, num_feat: int):
        layers = []
        if scale & (scale - 1) == 0:
            for _ in range(int(math.log2(scale))):
                layers += [nn.Conv2d(num_feat, 4 * num_feat, 3, 1, 1), nn.PixelShuffle(2)]
        elif scale == 3:
            layers += [nn.Conv2d(num_feat, 9 * num_feat, 3, 1, 1), nn.PixelShuffle(3)]
        else:
            raise ValueError(f"upscale {scale} is not supported (1, 2**n or 3)")
        super().__init__(*layers)
