"""k-fold cross-validation data: deterministic folds over the training pairs, and their datasets.

    folds, holdout_set = build_fold_datasets(args, num_folds=3)     # [(train_set, val_set)] * 3
    ...train one model per fold (resume and summary: utils/folds.py)...

Every pair is the validation data of exactly one fold and training data of all the others. The
pairs a layout sets aside for validation (a val/ split, ``--val-data``, ``--val-fraction``) are kept
out of every fold: a held-out set on which the fold models and their ensemble can be compared.
"""
import numpy as np

from .build import pixel_cache_from_args
from .dataset import PairedDataset
from .pairs import _pair_order, check_pairs, resolve_datasets_pairs


def kfold_split(pairs, num_folds: int, seed: int) -> list:
    """Split ``pairs`` into ``num_folds`` folds; returns ``[(train_pairs, val_pairs)] * num_folds``.

    Pairs are sorted by name, shuffled by ``np.random.default_rng(seed)`` and dealt into folds of
    sizes differing by at most one, so the split depends only on the set of pairs, ``num_folds`` and
    ``seed``. The validation lists are disjoint and together hold every pair once; each training list
    is the complement of its validation list. All lists are sorted by name.
    """
    ordered = sorted(pairs, key=_pair_order)
    if num_folds < 2:
        raise ValueError(f"--folds must be at least 2, got {num_folds}")
    if len(ordered) < num_folds:
        raise ValueError(f"--folds {num_folds} needs at least {num_folds} training pairs, got {len(ordered)}")
    shuffled = np.random.default_rng(seed).permutation(len(ordered))
    splits = []
    for positions in np.array_split(shuffled, num_folds):
        held_out = set(positions.tolist())
        train = [pair for position, pair in enumerate(ordered) if position not in held_out]
        val = [pair for position, pair in enumerate(ordered) if position in held_out]
        splits.append((train, val))
    return splits


def build_fold_datasets(args, num_folds: int, target_aliases=None):
    """The fold datasets for the shared data flags: ``([(train_set, val_set)] * num_folds, holdout_set)``.

    The training pairs of ``--data`` are split by :func:`kfold_split` (seed ``args.seed``); the pairs
    set aside for validation form ``holdout_set`` (None when there are none, e.g. ``--val-fraction 0``).
    Every header is checked before training, as in :func:`data.build.build_datasets`.
    """
    train_pairs, holdout_pairs = resolve_datasets_pairs(args.data, val_data=args.val_data,
                                                        val_fraction=args.val_fraction, seed=args.seed,
                                                        target_aliases=target_aliases)
    check_pairs(train_pairs + holdout_pairs)
    splits = kfold_split(train_pairs, num_folds, args.seed)
    print(f"data: {len(train_pairs)} pairs in {num_folds} folds of "
          f"{'/'.join(str(len(val)) for _, val in splits)}, {len(holdout_pairs)} held-out pairs, from {args.data}")
    cache = pixel_cache_from_args(args)
    folds = [(PairedDataset(train, crop=args.crop, augment=True, cache=cache),
              PairedDataset(val, center_crop=args.val_crop or None, cache=cache)) for train, val in splits]
    holdout = (PairedDataset(holdout_pairs, center_crop=args.val_crop or None, cache=cache)
               if holdout_pairs else None)
    return folds, holdout
