"""The run folder of a k-fold cross-validation recipe: fold resumption, and the summary over folds.

    resume_folder(args)                                   # --resume OUT: continue the folds in OUT
    checkpoint, complete = fold_resume_path(args, fold, OUT / f"fold_{fold}")
    ...train fold k on data.folds.build_fold_datasets(...)[k]...
    write_fold_summary(OUT, folds, args)                  # OUT/summary.json, mean and std over folds

The folds themselves (which pairs validate which fold) are data: :mod:`data.folds`.
"""
import json
from pathlib import Path

import numpy as np

from .checkpoint import load_checkpoint

FOLD_METRICS = ("psnr", "ssim", "l1")


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
