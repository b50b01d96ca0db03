"""Padding to a size multiple: every network of the library takes any H x W by padding its input to
the multiple its downsampling (or attention window) needs and cropping the output back."""
import torch
import torch.nn.functional as F


def pad_to_multiple(image: torch.Tensor, multiple: int, mode: str = "reflect"):
    """Pad (N, C, H, W) on the bottom/right to multiples of ``multiple``; returns (padded, (H, W)).

    ``mode`` is any of :func:`torch.nn.functional.pad`'s; 'reflect' falls back to 'replicate' where
    the pad is not smaller than the side (tiny inputs), which reflection cannot cover."""
    height, width = image.shape[-2:]
    pad_h, pad_w = (-height) % multiple, (-width) % multiple
    if pad_h or pad_w:
        if mode == "reflect" and not (pad_h < height and pad_w < width):
            mode = "replicate"
        image = F.pad(image, (0, pad_w, 0, pad_h), mode=mode)
    return image, (height, width)
