"""Loss terms. Each has the signature ``loss(pred, target, inp) -> scalar tensor``."""
from .color import HSVLoss, SaturationLoss
from .combined import CombinedLoss
from .pixel import CharbonnierLoss, L1Loss
from .window import WindowAwareLoss, overexposure_mask

__all__ = ["CharbonnierLoss", "CombinedLoss", "HSVLoss", "L1Loss", "SaturationLoss",
           "WindowAwareLoss", "overexposure_mask"]
