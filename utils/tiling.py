"""Full-resolution inference in overlapping tiles: the one helper validation and enhance.py share.

Peak device memory is bounded by ``batch_size`` tiles, not by the photo: the photo and the blended
output stay where the input lives (usually the CPU) and only tiles travel to the device.
"""
import torch

from models.padding import pad_to_multiple


def _tile_starts(length: int, tile: int, stride: int) -> list:
    if length <= tile:
        return [0]
    starts = list(range(0, length - tile, stride))
    starts.append(length - tile)
    return starts


def _blend_ramp(length: int, overlap: int, ramp_start: bool, ramp_end: bool, device) -> torch.Tensor:
    """Blending weights along one axis of a tile: 1 inside, and on a side that overlaps a
    neighbouring tile, 0 for the outer quarter of the overlap (where the tile's own border effects
    live) then a raised-cosine rise to 1. Sides on the image border keep weight 1."""
    ramp = torch.ones(length, device=device)
    margin = overlap // 4
    rise = overlap - margin
    if overlap > 0 and rise > 0:
        position = (torch.arange(rise, device=device, dtype=torch.float32) + 0.5) / rise
        edge = torch.cat([torch.zeros(margin, device=device), torch.sin(0.5 * torch.pi * position) ** 2])
        if ramp_start:
            ramp[:overlap] = edge
        if ramp_end:
            ramp[length - overlap:] = torch.minimum(ramp[length - overlap:], edge.flip(0))
    return ramp


@torch.no_grad()
def tiled_forward(fn, image: torch.Tensor, tile: int = 512, overlap: int = 64, batch_size: int = 4,
                  device=None, multiple: int = 8) -> torch.Tensor:
    """Apply ``fn`` (N, C, h, w) -> (N, C_out, h, w) to a large image by overlapping tiles.

    ``tile <= 0``, or an image no larger than one tile, runs whole (padded to ``multiple``).
    Otherwise tiles of ``tile``x``tile`` with ``overlap`` pixels of overlap are batched through
    ``fn`` on ``device`` and blended with raised-cosine ramps that ignore each tile's outer border
    (see :func:`_blend_ramp`), which hides seams. The result is float32 on
    ``image``'s device, same height and width as ``image``.
    """
    device = torch.device(device) if device is not None else image.device
    height, width = image.shape[-2:]
    if tile <= 0 or (height <= tile and width <= tile):
        padded, _ = pad_to_multiple(image.to(device), multiple)
        return fn(padded)[..., :height, :width].float().to(image.device)
    if tile % multiple:
        raise ValueError(f"tile size {tile} must be a multiple of {multiple}")
    if not 0 <= overlap < tile // 2:
        raise ValueError(f"overlap {overlap} must be in [0, tile/2)")
    stride = tile - overlap
    tile_h, tile_w = min(tile, height), min(tile, width)
    boxes = [(top, left) for top in _tile_starts(height, tile, stride) for left in _tile_starts(width, tile, stride)]

    def tile_weight(top: int, left: int) -> torch.Tensor:
        rows = _blend_ramp(tile_h, overlap, top > 0, top + tile_h < height, image.device)
        cols = _blend_ramp(tile_w, overlap, left > 0, left + tile_w < width, image.device)
        return rows[:, None] * cols[None, :]

    weights = {box: tile_weight(*box) for box in boxes}
    outputs = []
    for sample in image:
        accumulated, weight_sum = None, torch.zeros(height, width, device=image.device)
        for first in range(0, len(boxes), batch_size):
            chunk = boxes[first:first + batch_size]
            tiles = torch.stack([sample[:, t:t + tile_h, l:l + tile_w] for t, l in chunk]).to(device)
            padded, _ = pad_to_multiple(tiles, multiple)
            result = fn(padded)[..., :tile_h, :tile_w].float().to(image.device)
            if accumulated is None:
                accumulated = torch.zeros(result.shape[1], height, width, device=image.device)
            for (top, left), tile_out in zip(chunk, result):
                accumulated[:, top:top + tile_h, left:left + tile_w] += tile_out * weights[top, left]
                weight_sum[top:top + tile_h, left:left + tile_w] += weights[top, left]
        outputs.append(accumulated / weight_sum)
    return torch.stack(outputs)
