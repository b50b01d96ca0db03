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
        return self.draws(self.start_step * self.batch_size)

    def draws(self, first_draw):
        """The stream from draw number `first_draw` on."""
        draw = first_draw
        epoch, position = divmod(draw, self.num_items)
        while True:
            order = self.epoch_order(epoch)
            for index in order[position:].tolist():
                yield index, self.sample_seed(draw)
                draw += 1
            epoch += 1
            position = 0


# Restormer's official progressive schedule (options/*/Restormer.yml of swz30/Restormer: iters,
# gt_sizes, mini_batch_sizes; 300k iterations in all): (steps, crop, batch size) per stage.
OFFICIAL_RESTORMER_SCHEDULE = ((92_000, 128, 8), (64_000, 160, 5), (48_000, 192, 4),
                               (36_000, 256, 2), (36_000, 320, 1), (24_000, 384, 1))


class PatchSchedule:
    """Crop size and batch size per optimizer step, in stages: ``stages`` is a list of
    ``(first_step, crop, batch_size)`` with first steps rising from 0; a stage lasts until the next
    one starts. ``crop=None`` keeps the dataset's own crop (the constant schedule of a plain run)."""

    def __init__(self, stages):
        stages = [(int(first), crop, int(batch)) for first, crop, batch in stages]
        if not stages or stages[0][0] != 0 or any(b[0] <= a[0] for a, b in zip(stages, stages[1:])):
            raise ValueError(f"patch schedule stages must start at step 0 and rise, got {stages}")
        if any(batch < 1 or (crop is not None and crop < 1) for _, crop, batch in stages):
            raise ValueError(f"patch schedule crops and batch sizes must be positive, got {stages}")
        self.stages = stages

    @classmethod
    def constant(cls, batch_size, crop=None):
        return cls([(0, crop, batch_size)])

    @classmethod
    def parse(cls, spec, total_steps):
        """``'official'`` (:data:`OFFICIAL_RESTORMER_SCHEDULE`, its stage lengths scaled to
        ``total_steps``) or ``'STEPS:CROP:BATCH,...'``: stage lengths in optimizer steps, in order; the
        last stage lasts to the end of the run whatever its STEPS says."""
        if spec == "official":
            lengths = [steps for steps, _, _ in OFFICIAL_RESTORMER_SCHEDULE]
            sizes = [(crop, batch) for _, crop, batch in OFFICIAL_RESTORMER_SCHEDULE]
            scale = total_steps / sum(lengths)
        else:
            try:
                stages = [tuple(int(part) for part in item.split(":")) for item in spec.split(",")]
                if not all(len(stage) == 3 for stage in stages):
                    raise ValueError
            except ValueError:
                raise ValueError(f"--progressive {spec!r}: expected 'official' or STEPS:CROP:BATCH,... "
                                 "(e.g. 20000:128:8,20000:256:2,10000:384:1)") from None
            lengths, sizes, scale = [s[0] for s in stages], [s[1:] for s in stages], 1.0
        firsts, total = [], 0.0
        for length in lengths:
            firsts.append(round(total * scale))
            total += length
        if len(firsts) > 1 and firsts[-1] >= total_steps:
            raise ValueError(f"--progressive {spec!r}: its last stage would start at step {firsts[-1]}, "
                             f"after the run's {total_steps} steps")
        return cls([(first, crop, batch) for first, (crop, batch) in zip(firsts, sizes)])

    def stage_index(self, step):
        """Which stage (0-based) optimizer step `step` trains in."""
        return sum(first <= step for first, _, _ in self.stages) - 1

    def at(self, step):
        """``(crop, batch_size)`` of optimizer step `step`."""
        _, crop, batch = self.stages[self.stage_index(step)]
        return crop, batch

    def draws_before(self, step, grad_accum=1):
        """Samples drawn by the steps before `step` (each takes `grad_accum` micro-batches)."""
        total = 0
        for (first, _, batch), (end, _, _) in zip(self.stages, self.stages[1:] + [(step, None, 0)]):
            total += max(0, min(end, step) - first) * batch * grad_accum
        return total

    def describe(self, index):
        first, crop, batch = self.stages[index]
        return f"patch stage {index + 1}/{len(self.stages)} from step {first}: crop {crop}, batch {batch}"


class ResumableBatchSampler(torch.utils.data.Sampler):
    """Infinite stream of micro-batches (lists of keys) for `PairedDataset`, resumable at any step.

    Optimizer step k takes `grad_accum` micro-batches of the batch size `schedule` gives step k; their
    keys are the next draws of :class:`ResumableSampler`'s stream, as `(index, sample_seed)`, or
    `(index, sample_seed, crop)` where the schedule sets a crop. Starting at `start_step` jumps to the
    first draw of that step, so a resumed run sees exactly the micro-batches the uninterrupted run
    would have seen, and accumulating N micro-batches of B draws what one batch of N*B would.

    Sharded over `world_size` processes (data-parallel training), each micro-batch draws
    `world_size` times the schedule's batch size and process `rank` takes its consecutive share: W
    processes of batch B see together exactly what one process of batch W*B sees, whatever W is, so a
    run resumes on a different number of processes (keeping W*B) with the same data.
    """

    def __init__(self, num_items, schedule, seed, start_step=0, grad_accum=1, stream=None, rank=0,
                 world_size=1):
        if grad_accum < 1:
            raise ValueError(f"grad_accum must be >= 1, got {grad_accum}")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank must be in [0, world_size), got rank {rank} of {world_size}")
        # `stream`: another source of draws with the same `draws(first_draw)` (a curriculum)
        self.stream = stream or ResumableSampler(num_items, 1, seed)
        self.schedule, self.start_step, self.grad_accum = schedule, start_step, grad_accum
        self.rank, self.world_size = rank, world_size

    def __iter__(self):
        draws = self.stream.draws(self.schedule.draws_before(self.start_step, self.grad_accum) * self.world_size)
        step = self.start_step
        while True:
            crop, batch_size = self.schedule.at(step)
            for _ in range(self.grad_accum):
                keys = [next(draws) for _ in range(batch_size * self.world_size)]
                keys = keys[self.rank * batch_size:(self.rank + 1) * batch_size]
                yield keys if crop is None else [(index, seed, crop) for index, seed in keys]
            step += 1


def train_batches(dataset, batch_size, seed, start_step=0, workers=4, pin_memory=False, grad_accum=1,
                  schedule=None, stream=None, rank=0, world_size=1):
    """Infinite iterator of training micro-batches (dicts of stacked tensors plus a list of names).

    Optimizer step k takes `grad_accum` micro-batches of `batch_size` images, or of the crop and batch
    size a :class:`PatchSchedule` `schedule` gives step k. They depend only on (dataset, batch size or
    schedule, grad_accum, seed, k), not on `workers` nor on whether the run was resumed: pass the
    optimizer step to resume from as `start_step`. Every batch is full. `stream` replaces the uniform
    epoch-by-epoch draws (e.g. :class:`data.curriculum.CurriculumStream`). `rank` of `world_size`
    processes takes its share of every micro-batch (see :class:`ResumableBatchSampler`).
    """
    schedule = schedule or PatchSchedule.constant(batch_size)
    sampler = ResumableBatchSampler(len(dataset), schedule, seed, start_step, grad_accum, stream, rank,
                                    world_size)
    loader = torch.utils.data.DataLoader(
        dataset,
        batch_sampler=sampler,
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
