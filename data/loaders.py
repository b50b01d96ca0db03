"""DataLoaders for training (infinite, resumable, reproducible) and validation (in order, one by one)."""

import numpy as np
import torch

# Tags that keep the epoch-order and per-sample random streams apart for the same seed.
_ORDER_STREAM = 0
_SAMPLE_STREAM = 1

# Batches each worker keeps ready: decoding multi-megapixel JPEGs is slow and uneven, a deeper queue
# keeps the GPU from waiting on an unlucky batch.
_PREFETCH_BATCHES_PER_WORKER = 4


class ResumableSampler(torch.utils.data.Sampler):
    """Infinite stream of `(index, sample_seed)` for `PairedDataset`, resumable at any step.

    Draw d (counting from 0 over the whole run) comes from epoch d // num_items, whose order is a
    permutation drawn from a generator seeded with (seed, epoch); its `sample_seed` is derived from
    (seed, d). Starting at `start_step` jumps straight to draw start_step * batch_size, so a resumed
    run sees exactly the batches the uninterrupted run would have seen from that step on.
    """

    def __init__(self, num_items, batch_size, seed, start_step=0):
        if num_items < 1:
            raise ValueError(f"ResumableSampler needs at least one item, got num_items={num_items}")
        if batch_size < 1 or seed < 0 or start_step < 0:
            raise ValueError(
                f"ResumableSampler needs batch_size >= 1, seed >= 0 and start_step >= 0, "
                f"got {batch_size}, {seed}, {start_step}"
            )
        self.num_items = num_items
        self.batch_size = batch_size
        self.seed = seed
        self.start_step = start_step

    def epoch_order(self, epoch):
        """The order (a permutation of range(num_items)) in which epoch `epoch` visits the items."""
        return np.random.default_rng([self.seed, _ORDER_STREAM, epoch]).permutation(self.num_items)

    def sample_seed(self, draw):
        """The seed of the random crop/augmentation of draw number `draw` (a 64-bit int)."""
        return int(np.random.SeedSequence([self.seed, _SAMPLE_STREAM, draw]).generate_state(1, np.uint64)[0])

    def __iter__(self):
        draw = self.start_step * self.batch_size
        epoch, position = divmod(draw, self.num_items)
        while True:
            order = self.epoch_order(epoch)
            for index in order[position:].tolist():
                yield index, self.sample_seed(draw)
                draw += 1
            epoch += 1
            position = 0


def train_batches(dataset, batch_size, seed, start_step=0, workers=4, pin_memory=False):
    """Infinite iterator of training batches (dicts of stacked tensors plus a list of names).

    Step k's batch depends only on (dataset, batch_size, seed, k), not on `workers` nor on whether the
    run was resumed: pass the step to resume from as `start_step`. Every batch is full.
    """
    sampler = ResumableSampler(len(dataset), batch_size, seed, start_step)
    loader = torch.utils.data.DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        drop_last=True,
        num_workers=workers,
        pin_memory=pin_memory,
        persistent_workers=workers > 0,
        prefetch_factor=_PREFETCH_BATCHES_PER_WORKER if workers > 0 else None,
    )
    return iter(loader)


def val_loader(dataset, workers=2):
    """Validation DataLoader: batch size 1 (photos differ in size), dataset order, workers kept alive
    between evaluations."""
    return torch.utils.data.DataLoader(
        dataset,
        batch_size=1,
        shuffle=False,
        num_workers=workers,
        persistent_workers=workers > 0,
    )
