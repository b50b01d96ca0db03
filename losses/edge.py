"""Edge loss: match the image gradients of the target (window frames, mullions, furniture outlines).

Pixel losses tolerate a slight blur, which costs little L1 but softens every edge; comparing
gradients penalises it directly.
"""
import torch
import torch.nn.functional as F
from torch import nn


class EdgeLoss(nn.Module):
    """L = mean over channels and pixels of |D_x(pred - target)| + |D_y(pred - target)|.

    D_x, D_y are the 3x3 Sobel derivatives divided by 8, i.e. the (smoothed) change per pixel: a ramp
    rising by a per pixel has D_x = a. Since they are linear, D(pred - target) = D(pred) - D(target), so
    this is the L1 distance between the two images' gradients, computed with one convolution. Borders
    are replicate-padded (the image frame is no edge). Written by hand: torchvision has no Sobel filter
    and OpenCV's neither batches tensors nor propagates gradients.
    """

    def __init__(self):
        super().__init__()
        horizontal = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]]) / 8.0
        self.register_buffer("kernels", torch.stack([horizontal, horizontal.t()]).unsqueeze(1), persistent=False)

    def forward(self, pred, target, inp=None):
        # fp32 even under autocast: a half-precision convolution would round small gradients away.
        with torch.autocast(device_type=pred.device.type, enabled=False):
            error = (pred.float() - target.float()).flatten(0, 1).unsqueeze(1)  # channels as images
            padded = F.pad(error, (1, 1, 1, 1), mode="replicate")
            derivatives = F.conv2d(padded, self.kernels.float())
            return derivatives.abs().mean() * 2.0  # mean over (D_x, D_y) pairs -> their sum
