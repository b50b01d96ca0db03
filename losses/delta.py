"""Delta-aware loss: weight each pixel by whether the edit changes it (needs fixing) or keeps it (preserve).

An HDR edit leaves parts of a photo alone (a well-exposed wall) and rewrites others (a blown-out window,
a dark corner). Where the as-shot input already agrees with the target the model must only *preserve*
it; where they differ it must *fix* it, which is the hard, rare part plain L1 under-weights. The map
of what needs fixing comes from the pair itself (|target - input|), so it needs no labels, no window
detector and no depth: any paired data set supplies it.

Used by ``train_robust_window.py`` and the depth / multi-feature scripts (whose models take extra
input channels: pass them the RGB photo, ``inp[:, :3]``, not the stacked network input).
"""
import torch
from torch import nn

# A channel change of 0.05 (~13 of 255 levels) is a visible edit; JPEG noise and small re-encoding
# differences stay well below it.
DELTA_THRESHOLD = 0.05
DELTA_SOFTNESS = 0.01
FIX_WEIGHT = 3.0
PRESERVE_WEIGHT = 1.0


def change_mask(inp: torch.Tensor, target: torch.Tensor, threshold: float = DELTA_THRESHOLD,
                softness: float = DELTA_SOFTNESS) -> torch.Tensor:
    """Soft map of the pixels the edit changes, (N, 1, H, W) in (0, 1).

    m = sigmoid((max_c |target_c - inp_c| - threshold) / softness): the largest per-channel change, so
    a pure colour correction (one channel moves) counts as much as a brightness change. 0.5 at the
    threshold; ~0.9995 / ~0.0005 at threshold +/- 0.075 with the defaults (softness 0.01).
    """
    delta = (target.float() - inp.float()).abs().amax(dim=1, keepdim=True)
    return torch.sigmoid((delta - threshold) / softness)


class DeltaAwareLoss(nn.Module):
    """Weighted L1 that puts ``fix_weight`` on changed pixels and ``preserve_weight`` on unchanged ones.

    L = sum_p w_p |pred_p - target_p| / (C * sum_p w_p),  w = preserve_weight + (fix_weight - preserve_weight) m

    with m = :func:`change_mask` (input vs target) and the sums over the batch's pixels (channels for
    the numerator). Normalising by sum(w) keeps L on the scale of L1 (a uniform error e gives L = e,
    whatever the weights or the share of changed pixels), so its weight mixes with other terms as L1's
    does; the ratio fix_weight / preserve_weight says how much more a changed pixel's error counts than
    an unchanged one's. ``inp`` must be the as-shot RGB photo, same shape as ``target``.
    """

    def __init__(self, fix_weight: float = FIX_WEIGHT, preserve_weight: float = PRESERVE_WEIGHT,
                 threshold: float = DELTA_THRESHOLD, softness: float = DELTA_SOFTNESS):
        super().__init__()
        if fix_weight < 0 or preserve_weight < 0 or fix_weight + preserve_weight == 0:
            raise ValueError(f"DeltaAwareLoss needs fix_weight, preserve_weight >= 0, not both 0; "
                             f"got {fix_weight}, {preserve_weight}")
        if softness <= 0:
            raise ValueError(f"DeltaAwareLoss softness must be > 0, got {softness}")
        self.fix_weight, self.preserve_weight = fix_weight, preserve_weight
        self.threshold, self.softness = threshold, softness

    def pixel_weights(self, inp: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """The unnormalised per-pixel weights w, (N, 1, H, W)."""
        mask = change_mask(inp, target, self.threshold, self.softness)
        return self.preserve_weight + (self.fix_weight - self.preserve_weight) * mask

    def forward(self, pred, target, inp):
        if inp is None or inp.shape != target.shape:
            raise ValueError("DeltaAwareLoss needs the as-shot RGB input with the target's shape "
                             f"{tuple(target.shape)}, got {None if inp is None else tuple(inp.shape)} "
                             "(models with extra input channels: pass inp[:, :3])")
        weights = self.pixel_weights(inp, target)
        abs_error = (pred.float() - target.float()).abs()
        # The floor only matters for preserve_weight 0 with nothing changed: then L = 0, not 0/0.
        return (weights * abs_error).sum() / (abs_error.shape[1] * weights.sum().clamp_min(1e-12))


def add_delta_args(parser) -> None:
    """The flags of :class:`DeltaAwareLoss` (catalog defaults), for every script that trains with it."""
    parser.add_argument("--fix-weight", type=float, default=FIX_WEIGHT,
                        help="weight of pixels the edit changes (input != target)")
    parser.add_argument("--preserve-weight", type=float, default=PRESERVE_WEIGHT,
                        help="weight of pixels the edit keeps (input == target)")
    parser.add_argument("--delta-threshold", type=float, default=DELTA_THRESHOLD,
                        help="largest channel change |target - input| above which a pixel needs fixing (soft)")
    parser.add_argument("--delta-softness", type=float, default=DELTA_SOFTNESS)


def delta_loss_from_args(args) -> DeltaAwareLoss:
    """The :class:`DeltaAwareLoss` configured by the flags of :func:`add_delta_args`."""
    return DeltaAwareLoss(args.fix_weight, args.preserve_weight, args.delta_threshold, args.delta_softness)
