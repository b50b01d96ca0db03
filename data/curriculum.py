"""Easy-to-hard curriculum over training pairs (Bengio et al. 2009): rank the pairs by how much the
edit changes the photo, and draw the early samples from the easiest ones only.

Difficulty of a pair: the mean absolute difference between input and target, measured on both images
reduced to at most 64 pixels on the long side (area interpolation), so ranking a dataset costs one
decode per pair. The pool a draw may pick from grows linearly from the easiest ``start_fraction``
of the pairs at the first draw to all pairs at draw ``ramp_draws`` (a script passes ramp steps x
images per step); within the pool, draws are uniform with replacement.
"""
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


class CurriculumStream:
    """``(index, sample_seed)`` draws from the easiest pairs first, for
    :class:`data.loaders.ResumableBatchSampler` (``stream=``).

    Draw d picks uniformly among the first ``pool_size(d)`` entries of ``ranking`` with a generator
    seeded by (seed, d), so every draw is reproducible on its own and a resumed run continues
    exactly; its sample seed (crop, flip) is :class:`ResumableSampler`'s for draw d.
    """

    def __init__(self, ranking, seed, ramp_draws, start_fraction=0.25):
        if ramp_draws < 0 or not 0 < start_fraction <= 1:
            raise ValueError(f"curriculum needs ramp_draws >= 0 and start_fraction in (0, 1], "
                             f"got {ramp_draws}, {start_fraction}")
        self.ranking, self.seed = list(ranking), seed
        self.ramp_draws, self.start_fraction = ramp_draws, start_fraction
        self.seeds = ResumableSampler(len(self.ranking), 1, seed)

    def fraction(self, draw: int) -> float:
        """The share of the pairs (easiest first) that draw ``draw`` picks from."""
        if draw >= self.ramp_draws:
            return 1.0
        return self.start_fraction + (1.0 - self.start_fraction) * draw / self.ramp_draws

    def pool_size(self, draw: int) -> int:
        return min(len(self.ranking), max(1, round(self.fraction(draw) * len(self.ranking))))

    def draws(self, first_draw: int):
        draw = first_draw
        while True:
            choice = int(np.random.default_rng([self.seed, _CURRICULUM_STREAM, draw]).integers(self.pool_size(draw)))
            yield self.ranking[choice], self.seeds.sample_seed(draw)
            draw += 1
