"""Easy-to-hard curriculum over training pairs (Bengio et al. 2009): rank the pairs by how much the
edit changes the photo, and draw early batches from the easiest ones only.

Difficulty of a pair: the mean absolute difference between input and target, measured on both images
reduced to at most 64 pixels on the long side (area interpolation), so ranking a dataset costs one
decode per pair. The pool of pairs a draw may pick grows linearly from the easiest ``start_fraction``
at step 0 to all pairs at ``ramp_steps``; within the pool, draws are uniform with replacement.
"""
import math

import cv2
import numpy as np

from .io import read_image
from .loaders import ResumableSampler

_CURRICULUM_STREAM = 2
_RANKING_SIDE = 64


def pair_difficulty(pair) -> float:
    """Mean |input - target| of a pair on thumbnails (long side <= 64 pixels)."""
    images = [read_image(pair.input), read_image(pair.target)]
    height, width = images[0].shape[:2]
    scale = min(1.0, _RANKING_SIDE / max(height, width))
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    small = [cv2.resize(image, size, interpolation=cv2.INTER_AREA) for image in images]
    return float(np.abs(small[0] - small[1]).mean())


def rank_by_difficulty(pairs) -> list:
    """Indices of ``pairs``, easiest (smallest input-target difference) first; ties keep their order."""
    difficulties = [pair_difficulty(pair) for pair in pairs]
    return sorted(range(len(pairs)), key=lambda index: difficulties[index])


class CurriculumSampler(ResumableSampler):
    """Infinite ``(index, sample_seed)`` keys drawn from the easiest pairs first, resumable at any step.

    Draw d (over the whole run) belongs to step d // batch_size; it picks uniformly among the first
    ``pool_size(step)`` entries of ``ranking`` with a generator seeded by (seed, d), so any draw is
    reproducible on its own and a resumed run continues exactly. Its sample seed is
    :class:`ResumableSampler`'s.
    """

    def __init__(self, ranking, batch_size, seed, ramp_steps, start_fraction=0.25, start_step=0):
        super().__init__(len(ranking), batch_size, seed, start_step)
        if ramp_steps < 0 or not 0 < start_fraction <= 1:
            raise ValueError(f"curriculum needs ramp_steps >= 0 and start_fraction in (0, 1], "
                             f"got {ramp_steps}, {start_fraction}")
        self.ranking = list(ranking)
        self.ramp_steps, self.start_fraction = ramp_steps, start_fraction

    def fraction(self, step: int) -> float:
        """The share of pairs (easiest first) that step ``step`` draws from."""
        if step >= self.ramp_steps:
            return 1.0
        return self.start_fraction + (1.0 - self.start_fraction) * step / self.ramp_steps

    def pool_size(self, step: int) -> int:
        return min(self.num_items, max(1, math.ceil(self.fraction(step) * self.num_items)))

    def __iter__(self):
        draw = self.start_step * self.batch_size
        while True:
            pool = self.pool_size(draw // self.batch_size)
            choice = int(np.random.default_rng([self.seed, _CURRICULUM_STREAM, draw]).integers(pool))
            yield self.ranking[choice], self.sample_seed(draw)
            draw += 1

