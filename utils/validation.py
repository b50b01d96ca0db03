"""Validation on whole images (or centre crops): L1 / PSNR / SSIM and the sample grid."""
import torch

from .metrics import l1, psnr, ssim
from .tiling import tiled_forward
from .training import autocast


def _default_inputs(batch):
    return batch["input"]


def stretch_for_display(maps: torch.Tensor) -> torch.Tensor:
    """Each (C, H, W) map of an (N, C, H, W) batch linearly stretched to [0, 1] over its own
    min..max (a constant map becomes 0), so maps of any range (a light-up factor, a gain) can sit in
    a sample grid beside images."""
    flat = maps.flatten(1)
    low, high = flat.min(dim=1).values, flat.max(dim=1).values
    scale = torch.where(high > low, high - low, torch.ones_like(high))
    shape = (-1,) + (1,) * (maps.dim() - 1)
    return (maps - low.view(shape)) / scale.view(shape)


@torch.no_grad()
def validate(model, loader, device, amp: str = "none", tile: int = 0, overlap: int = 64,
             num_samples: int = 4, model_inputs=_default_inputs, identity: bool = False,
             sample_views=None):
    """Score ``model`` on every batch of ``loader``; returns ``(metrics, samples)``.

    ``metrics`` holds the mean ``l1``, ``psnr``, ``ssim`` over images; ``samples`` the first
    ``num_samples`` (input, output, target[, views...]) rows on the CPU for the grid. ``model_inputs(batch)``
    builds the network input from a batch (scripts with extra input channels pass their own);
    ``tile > 0`` runs large images in tiles through :func:`utils.tiling.tiled_forward`.
    ``sample_views(model, inputs)`` returns further (N, C, H, W) maps of the whole network input
    (e.g. a Retinex model's illumination); for the sampled images they join the grid row after the
    target, each stretched by :func:`stretch_for_display`.
    ``identity=True`` scores the input itself: the baseline a model must beat.
    Per-image metrics stay on the device until the end (one sync per validation).
    """
    was_training = model.training if model is not None else False
    if model is not None:
        model.eval()

    def predict(x):
        with autocast(device, amp):
            return model(x).float().clamp(0, 1)

    per_image, samples = {"l1": [], "psnr": [], "ssim": []}, []
    for batch in loader:
        target = batch["target"].to(device, non_blocking=True)
        if identity:
            output = batch["input"].to(device)
        else:
            output = tiled_forward(predict, model_inputs(batch).to(device), tile=tile, overlap=overlap,
                                   device=device)
        for name, metric in (("l1", l1), ("psnr", psnr), ("ssim", ssim)):
            per_image[name].append(metric(output, target, reduction="none"))
        if len(samples) < num_samples:
            row = [batch["input"][0].cpu(), output[0].cpu(), target[0].cpu()]
            if sample_views is not None:
                inputs = model_inputs(batch)[:1].to(device)
                with autocast(device, amp):
                    views = sample_views(model, inputs)
                row += [stretch_for_display(view.float())[0].cpu() for view in views]
            samples.append(tuple(row))
    if model is not None and was_training:
        model.train()
    if not per_image["l1"]:
        raise ValueError("the validation set is empty")
    names = list(per_image)
    means = torch.stack([torch.cat(per_image[n]).mean() for n in names]).tolist()
    return dict(zip(names, means)), samples
