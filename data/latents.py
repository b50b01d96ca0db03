"""The training samples of the diffusion (ControlNet) recipes: per-draw seeds, and target latents computed once.

Both datasets take their keys from the training sampler (an index, or ``(index, seed)`` from
:class:`data.loaders.ResumableSampler`) and add ``'sample_seed'``, the seed from which
``utils.controlnet_pipeline.StableDiffusionParts.draw`` draws a sample's latent, noise and timestep.
The VAE that :class:`LatentCache` encodes with is handed to it, already built, as a function.
"""
import numpy as np
import torch

from .dataset import PairedDataset


def sample_seed(key) -> int:
    """The seed of a sampler key: its seed for ``(index, seed)``, the index itself for an int key."""
    # int64 range: the DataLoader collates the seeds into a tensor.
    return int(key[1] if isinstance(key, tuple) else key) % 2 ** 63


class SeededSamples(torch.utils.data.Dataset):
    """``dataset``'s items plus ``'sample_seed'`` (:func:`sample_seed` of the key)."""

    def __init__(self, dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key) -> dict:
        return {**self.dataset[key], "sample_seed": sample_seed(key)}


class LatentCache(torch.utils.data.Dataset):
    """Training windows whose target latents were computed once: VAE posterior (mean, std) of the
    edited photo (float16) and the as-shot photo (uint8) of ``windows_per_image`` fixed windows per pair,
    kept in memory (at 1024 px: 0.25 MB of latents + 3 MB of photo per window).

    ``encode_images``: photos (N, 3, h, w) in [0, 1] on ``device`` -> their VAE posterior (mean, std),
    e.g. ``StableDiffusionParts.encode_images``. Window k of pair i is the ``crop`` window
    ``PairedDataset`` draws for the seed (seed, i, k) (no flips; reflect-padded if the photo is smaller).
    Items are ``{'latent_mean', 'latent_std', 'input', 'name', 'sample_seed'}``. A fresh latent is drawn
    from the cached posterior at every step (``StableDiffusionParts.draw``), so training sees exactly
    what encoding every step would give.
    """

    def __init__(self, pairs, encode_images, crop: int, windows_per_image: int, seed: int,
                 device, batch_size: int = 4):
        if windows_per_image < 1:
            raise ValueError(f"--windows-per-image must be at least 1, got {windows_per_image}")
        source = PairedDataset(pairs, crop=crop)
        keys = [(index, int(np.random.SeedSequence([seed, index, window]).generate_state(1)[0]))
                for index in range(len(source)) for window in range(windows_per_image)]
        self.means, self.stds, self.inputs, self.names = [], [], [], []
        for start in range(0, len(keys), batch_size):
            items = [source[key] for key in keys[start:start + batch_size]]
            targets = torch.stack([item["target"] for item in items]).to(device)
            mean, std = encode_images(targets)
            self.means += list(mean.half().cpu())
            self.stds += list(std.half().cpu())
            self.inputs += [(item["input"] * 255).round().to(torch.uint8) for item in items]
            self.names += [item["name"] for item in items]

    def __len__(self) -> int:
        return len(self.names)

    def __getitem__(self, key) -> dict:
        index = int(key[0] if isinstance(key, tuple) else key)
        return {"latent_mean": self.means[index].float(), "latent_std": self.stds[index].float(),
                "input": self.inputs[index].float() / 255, "name": self.names[index],
                "sample_seed": sample_seed(key)}
