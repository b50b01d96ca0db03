"""k-fold cross-validation: deterministic folds over the training pairs, their datasets, and the summary.

    folds, holdout_set = build_fold_datasets(args, num_folds=3)     # [(train_set, val_set)] * 3
    ...train one model per fold...
    summary = summarize_folds([{"psnr": 24.1, "ssim": 0.91, "l1": 0.05}, ...])

Every pair is the validation data of exactly one fold and training data of all the others. The
pairs a layout sets aside for validation (a val/ split, ``--val-data``, ``--val-fraction``) are kept
out of every fold: a held-out set on which the fold models and their ensemble can be compared.
"""
import json
from pathlib import Path

import numpy as np

from utils.checkpoint import load_checkpoint

from .dataset import PairedDataset
from .pairs import _pair_order, check_pairs, resolve_datasets_pairs

FOLD_METRICS = ("psnr", "ssim", "l1")


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
    folds = [(PairedDataset(train, crop=args.crop, augment=True, cache=args.cache),
              PairedDataset(val, center_crop=args.val_crop or None, cache=args.cache)) for train, val in splits]
    holdout = (PairedDataset(holdout_pairs, center_crop=args.val_crop or None, cache=args.cache)
               if holdout_pairs else None)
    return folds, holdout


def summarize_folds(fold_metrics: list, names=FOLD_METRICS) -> dict:
    """Mean and sample standard deviation (ddof=1) over folds of each metric in ``names``.

    ``fold_metrics`` holds one dict per fold; returns ``{"mean": {name: m}, "std": {name: s}}``.
    """
    if not fold_metrics:
        raise ValueError("summarize_folds needs the metrics of at least one fold")
    values = {name: np.array([float(metrics[name]) for metrics in fold_metrics]) for name in names}
    ddof = 1 if len(fold_metrics) > 1 else 0
    return {"mean": {name: float(v.mean()) for name, v in values.items()},
            "std": {name: float(v.std(ddof=ddof)) for name, v in values.items()}}


def resume_folder(args) -> None:
    """Under ``--resume OUT`` of a cross-validation run: check OUT holds fold runs and continue in it."""
    if args.resume:
        if not list(Path(args.resume).glob("fold_*/last.pt")):
            raise ValueError(f"--resume {args.resume}: not a cross-validation run folder (no fold_*/last.pt)")
        args.out = args.resume  # the folds continue where they are, beside the finished ones


def fold_resume_path(args, fold: int, fold_dir):
    """What fold ``fold`` does under the flags: ``(checkpoint_to_resume_or_None, already_complete)``.

    A fold is resumed from its last.pt only under --resume, and only if that checkpoint belongs to the
    same split (--folds, --seed); a fold that never saved starts fresh.
    """
    last = Path(fold_dir) / "last.pt"
    if not (args.resume and last.is_file()):
        return None, False
    saved = load_checkpoint(last)
    split = (saved["config"]["folds"], saved["config"]["seed"])
    if split != (args.folds, args.seed):
        raise ValueError(f"--resume: {last} belongs to the split of --folds {split[0]} --seed {split[1]}; "
                         "pass the same values")
    if saved["step"] >= args.steps:
        print(f"fold {fold}: complete ({last})")
        return None, True
    return last, False


def write_fold_summary(run_dir, folds, args) -> dict:
    """OUT/summary.json: each fold's best.pt scores on its own validation fold, with their mean and
    standard deviation; prints them and returns the summary."""
    run_dir = Path(run_dir)
    per_fold = []
    for fold, (_, val_set) in enumerate(folds, start=1):
        best = load_checkpoint(run_dir / f"fold_{fold}" / "best.pt")
        per_fold.append({"fold": fold, "step": best["step"], "val_pairs": len(val_set),
                         **{name: best["extra"]["val"][name] for name in FOLD_METRICS}})
    summary = {"folds": args.folds, "steps": args.steps, "seed": args.seed, "per_fold": per_fold,
               **summarize_folds(per_fold)}
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    mean, std = summary["mean"], summary["std"]
    print(f"cross-validation ({args.folds} folds, best.pt of each): PSNR {mean['psnr']:.2f} ± {std['psnr']:.2f} dB, "
          f"SSIM {mean['ssim']:.4f} ± {std['ssim']:.4f}, L1 {mean['l1']:.4f} ± {std['l1']:.4f}; "
          f"the ensemble: enhance.py / evaluate.py --checkpoint {run_dir}")
    return summary
