"""DarkIR + L1 + VGG perceptual + SSIM with k-fold cross-validation; the fold models form an ensemble.

CATALOG.md "DarkIR with Cross-Validation": the training pairs are split into --folds (3) disjoint
folds (data/folds.py); fold k trains a DarkIR (DarkIR-m, or --size l) on the other folds and validates
on fold k, so every pair is validated on exactly once. Every fold starts from --pretrained when given
(the published LOLBlur weights DarkIR_384.pt). Loss: L1 + VGG19 perceptual (losses/perceptual.py) +
(1 - SSIM) (losses/structural.py); the catalog gives no weights, so the defaults are those of the
other perceptual recipes (0.1, 0.2). --side-weight adds DarkIR's optional auxiliary loss on its
1/8-scale side output (losses/side_output.py; off by default, as in the official configs).
Optimizer defaults follow DarkIR's official training (lr 5e-4, weight decay 1e-3, no clipping);
--steps counts the optimizer steps of each fold.

Run folder: OUT/fold_1 ... OUT/fold_k (each a complete run folder: config, metrics, samples, best.pt,
last.pt) and OUT/summary.json: per fold the validation PSNR/SSIM/L1 of its best.pt (the checkpoint the
ensemble uses), and their mean and sample standard deviation. --resume OUT continues the folds whose
last.pt has not reached --steps, in OUT, and starts those that never saved one. Pairs that the data layout sets
aside for validation (a val/ split, --val-data, or --val-fraction of a flat folder; --val-fraction 0
puts every pair into the folds) stay out of every fold: on them the ensemble and its single fold
models can be compared fairly. enhance.py and evaluate.py take OUT itself as the checkpoint: the
ensemble, the mean of the fold models' outputs.

Usage:
    python train_darkir_cv.py --data /path/to/pairs --vgg-weights vgg19-dcbb9e9d.pth --pretrained DarkIR_384.pt
    python train_darkir_cv.py --vgg-weights random                      # built-in demo data, code check
    python train_darkir_cv.py --data DATA --vgg-weights vgg19-dcbb9e9d.pth --resume runs/train_darkir_cv
CPU smoke test (seconds):
    python train_darkir_cv.py --folds 2 --steps 4 --crop 32 --batch-size 2 --width 8 --enc-blocks 1 1 1 \
        --dec-blocks 1 1 1 --middle-blocks-enc 1 --middle-blocks-dec 1 --side-weight 0.5 --val-every 2 \
        --vgg-weights random --out /tmp/smoke
"""
import argparse
import json
from pathlib import Path

import torch

from data.folds import FOLD_METRICS, build_fold_datasets, summarize_folds
from data.loaders import train_batches, val_loader
from losses import CombinedLoss, L1Loss
from losses.perceptual import VGGPerceptualLoss, add_vgg_args
from losses.side_output import SideOutputLoss
from losses.structural import SSIMLoss
from models.darkir import DarkIR
from utils.checkpoint import load_checkpoint, load_pretrained, model_spec
from utils.cli import add_darkir_args, base_parser, darkir_kwargs, parse_args, run_cli
from utils.run import RunFolder, setup
from utils.training import (EMA, LossTracker, TrainingState, TrainStep, autocast, build_optimizer,
                            cosine_with_warmup, make_grad_scaler, seed_everything)

# DarkIR's official optimizer settings (cidautai/DarkIR options/train/*.yml).
RECIPE = dict(lr=5e-4, weight_decay=1e-3, grad_clip=0.0)
# No --data and no GPU: a width-16 DarkIR on small crops, 3 folds in minutes on 2 cores.
DEMO_BUDGET = dict(steps=150, crop=96, batch_size=4, width=16, lr=1e-3, warmup=20, val_every=50,
                   save_every=50, log_every=10, workers=2, ema=0.99)


def train_fold(args, fold, train_set, val_set, criterion, side_criterion, device, fold_dir):
    """Train (or continue, under --resume) the model of fold ``fold`` in ``fold_dir``: the one loop
    every fold runs. A fold whose last.pt already reached --steps is left as it is."""
    resume_path = fold_dir / "last.pt"
    if args.resume and resume_path.is_file():
        saved = load_checkpoint(resume_path)
        split = (saved["config"]["folds"], saved["config"]["seed"])
        if split != (args.folds, args.seed):
            raise ValueError(f"--resume: {resume_path} belongs to the split of --folds {split[0]} "
                             f"--seed {split[1]}; pass the same values")
        if saved["step"] >= args.steps:
            print(f"fold {fold}: complete ({resume_path})")
            return
    else:
        resume_path = None  # a fresh run, or a fold that never saved: start it
    fold_seed = args.seed + fold
    seed_everything(fold_seed)

    # --- model --------------------------------------------------------------------------------
    model_kwargs = darkir_kwargs(args)
    model = DarkIR(**model_kwargs).to(device)
    if args.pretrained:
        load_pretrained(model, args.pretrained)
    print(f"fold {fold}/{args.folds}: DarkIR, {sum(p.numel() for p in model.parameters()):,} parameters, "
          f"{len(train_set)} training / {len(val_set)} validation pairs")
    train_model = torch.compile(model) if args.compile else model

    # --- optimizer ----------------------------------------------------------------------------
    optimizer = build_optimizer(model, args.lr, args.weight_decay)
    scheduler = cosine_with_warmup(optimizer, args.warmup, args.steps)
    scaler = make_grad_scaler(args.amp, device)
    ema = EMA(model, args.ema) if args.ema > 0 else None
    train_step = TrainStep(optimizer, scheduler, scaler, args.grad_clip)
    config = {**vars(args), "fold": fold, "fold_seed": fold_seed, "model": model_spec(model, model_kwargs)}
    state = TrainingState(model=model, optimizer=optimizer, scheduler=scheduler, scaler=scaler,
                          ema=ema, config=config)

    # --- resume -------------------------------------------------------------------------------
    step, extra = state.resume(resume_path) if resume_path is not None else (0, {})
    fold_args = argparse.Namespace(**{**vars(args), "script": f"{args.script} fold {fold}/{args.folds}"})
    fold_dir.mkdir(parents=True, exist_ok=True)
    run = RunFolder(fold_dir, fold_args, state, best_psnr=extra.get("best_psnr", float("-inf")))
    batches = train_batches(train_set, args.batch_size, fold_seed, start_step=step,
                            workers=args.workers, pin_memory=device.type == "cuda")
    val_batches = val_loader(val_set, workers=min(args.workers, 2))
    if step == 0:
        run.log_identity(val_batches, device)
    eval_model = ema.module if ema is not None else model

    # --- loop ---------------------------------------------------------------------------------
    tracker = LossTracker()
    run.progress(step)
    model.train()
    try:
        while step < args.steps:
            batch = next(batches)
            inp = batch["input"].to(device, non_blocking=True)
            target = batch["target"].to(device, non_blocking=True)
            with autocast(device, args.amp):
                side, pred = train_model(inp, side_loss=True)
            losses = criterion(pred.float(), target, inp)
            if args.side_weight > 0:
                side_value = side_criterion(side, target)
                losses["loss"] = losses["loss"] + args.side_weight * side_value
                losses["side"] = side_value.detach()
            train_step(losses["loss"])
            if ema is not None:
                ema.update(model)
            tracker.update(losses)
            step += 1
            # --- validation / checkpoint (at --log-every / --val-every / --save-every) --------------
            run.end_step(step, tracker, train_step, eval_model, val_batches, device)
    except KeyboardInterrupt:
        run.interrupted(step)
    finally:
        run.close()


def main(argv=None):
    # --- config -----------------------------------------------------------------------------
    parser = base_parser(__doc__, **RECIPE)
    add_darkir_args(parser)
    add_vgg_args(parser)
    parser.add_argument("--folds", type=int, default=3, help="number of cross-validation folds (>= 2)")
    parser.add_argument("--l1-weight", type=float, default=1.0)
    parser.add_argument("--perceptual-weight", type=float, default=0.1, help="VGG19 feature L1")
    parser.add_argument("--ssim-weight", type=float, default=0.2, help="1 - SSIM")
    parser.add_argument("--side-weight", type=float, default=0.0,
                        help="L1 of DarkIR's 1/8-scale side output against the downscaled target (0: off)")
    args = parse_args(parser, argv, DEMO_BUDGET, script="train_darkir_cv")
    if args.resume:
        if not list(Path(args.resume).glob("fold_*/last.pt")):
            raise ValueError(f"--resume {args.resume}: not a cross-validation run folder (no fold_*/last.pt)")
        args.out = args.resume  # the folds continue where they are, beside the finished ones

    # --- setup --------------------------------------------------------------------------------
    device, run_dir = setup(args)

    # --- data ---------------------------------------------------------------------------------
    folds, _ = build_fold_datasets(args, args.folds)

    # --- loss (shared by the folds: VGG19 is loaded once) ---------------------------------------
    criterion = CombinedLoss({
        "l1": (args.l1_weight, L1Loss()),
        # VGG19 is only loaded when used (a weight-0 term is never built or computed).
        "perceptual": (args.perceptual_weight,
                       VGGPerceptualLoss(vgg_weights=args.vgg_weights) if args.perceptual_weight else None),
        "ssim": (args.ssim_weight, SSIMLoss()),
    }).to(device)
    side_criterion = SideOutputLoss()

    # --- folds --------------------------------------------------------------------------------
    for fold, (train_set, val_set) in enumerate(folds, start=1):
        train_fold(args, fold, train_set, val_set, criterion, side_criterion, device, run_dir / f"fold_{fold}")

    # --- summary ------------------------------------------------------------------------------
    per_fold = []
    for fold, (_, val_set) in enumerate(folds, start=1):
        best = load_checkpoint(run_dir / f"fold_{fold}" / "best.pt")
        per_fold.append({"fold": fold, "step": best["step"], "val_pairs": len(val_set),
                         **{name: best["extra"]["val"][name] for name in FOLD_METRICS}})
    summary = {"folds": args.folds, "steps": args.steps, "seed": args.seed, "per_fold": per_fold,
               **summarize_folds(per_fold)}
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    mean, std = summary["mean"], summary["std"]
    print(f"cross-validation ({args.folds} folds, best.pt of each): "
          f"PSNR {mean['psnr']:.2f} ± {std['psnr']:.2f} dB, SSIM {mean['ssim']:.4f} ± {std['ssim']:.4f}, "
          f"L1 {mean['l1']:.4f} ± {std['l1']:.4f}; the ensemble: enhance.py / evaluate.py --checkpoint {run_dir}")
    return summary


if __name__ == "__main__":
    run_cli(main)
