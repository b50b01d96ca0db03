"""Frozen Restormer backbone + a small colour refiner trained with the backbone's own loss.

CATALOG.md "Combined Loss Refiner": the refiner learns with exactly the loss of
train_restormer_512_combined_loss.py (L1 1.0 + window-aware L1 0.5 + HSV saturation 0.3, the same
CombinedLoss terms, --saturation-form and --window-normalization defaults), so its validation row compares apples to apples
with the backbone's: the 'backbone' split of metrics.jsonl scores the backbone alone on the same
validation photos.

The backbone (--backbone: a run folder or .pt of this codebase, EMA weights preferred, or an
official Restormer .pth) is frozen; its output is computed once per photo through enhance.py's tiled
inference and cached on disk (utils/refiner.py); the refiner (models/refiner.py) starts as the
identity on it. enhance.py / evaluate.py run backbone + refiner from this run's folder.

Usage:
    python train_elite_refiner_combined.py --backbone runs/train_restormer_512_combined_loss --data /path/to/pairs
    python train_elite_refiner_combined.py --backbone BACKBONE --resume runs/train_elite_refiner_combined
BACKBONE below: any Restormer run folder, e.g. the --out of train_restormer_512_combined_loss.py's smoke test.
CPU smoke test (seconds):
    python train_elite_refiner_combined.py --backbone BACKBONE --steps 4 --crop 32 --batch-size 2 \
        --refiner-width 8 --refiner-blocks 1 --backbone-tile 0 --val-every 2 --out /tmp/smoke
"""
import torch

from data.build import build_datasets
from data.loaders import val_loader
from losses import CombinedLoss, L1Loss, SaturationLoss, WindowAwareLoss
from losses.color import DEFAULT_SATURATION_FORM, SATURATION_FORM_HELP, SATURATION_FORMS
from losses.window import WINDOW_NORMALIZATION_HELP, WINDOW_NORMALIZATIONS, WINDOW_SOFTNESS, WINDOW_THRESHOLD
from utils.checkpoint import model_spec
from utils.cli import base_parser, parse_args, run_cli
from utils.refiner import (FrozenBackbone, add_refiner_args, build_refiner, log_backbone_baseline, refiner_inputs,
                           refiner_kwargs)
from utils.run import Run, prepare_model, setup
from utils.training import TrainingState, autocast, make_train_step

# No --data and no GPU: the demo photos, a refiner small enough for a few minutes on 2 cores.
DEMO_BUDGET = dict(steps=600, crop=96, batch_size=4, lr=1e-3, warmup=20, grad_clip=0.0,
                   val_every=150, save_every=150, log_every=10, workers=2, ema=0.99)


def main(argv=None):
    # --- config -----------------------------------------------------------------------------
    parser = base_parser(__doc__, lr=2e-4, warmup=500, grad_clip=0.0, steps=20_000)
    add_refiner_args(parser)
    parser.add_argument("--l1-weight", type=float, default=1.0)
    parser.add_argument("--window-weight", type=float, default=0.5)
    parser.add_argument("--saturation-weight", type=float, default=0.3)
    parser.add_argument("--saturation-form", choices=SATURATION_FORMS, default=DEFAULT_SATURATION_FORM,
                        help=SATURATION_FORM_HELP)
    parser.add_argument("--window-threshold", type=float, default=WINDOW_THRESHOLD,
                        help="input luma above which a pixel counts as over-exposed (soft)")
    parser.add_argument("--window-softness", type=float, default=WINDOW_SOFTNESS)
    parser.add_argument("--window-normalization", choices=WINDOW_NORMALIZATIONS, default="image",
                        help=WINDOW_NORMALIZATION_HELP)
    args = parse_args(parser, argv, DEMO_BUDGET, script="train_elite_refiner_combined")

    # --- setup --------------------------------------------------------------------------------
    device, run_dir = setup(args)
    backbone = FrozenBackbone.from_args(args, device)

    # --- data: (input, cached backbone output, target), cropped and flipped together -------------
    train_set, val_set = build_datasets(args, aligned=backbone.aligned_outputs)

    # --- model --------------------------------------------------------------------------------
    model = build_refiner(args)
    train_model = prepare_model(model, args, device, "ColorRefiner")

    # --- loss: the backbone's own (train_restormer_512_combined_loss.py) ----------------------------
    criterion = CombinedLoss({
        "l1": (args.l1_weight, L1Loss()),
        "window": (args.window_weight, WindowAwareLoss(args.window_threshold, args.window_softness,
                                                     args.window_normalization)),
        "saturation": (args.saturation_weight, SaturationLoss(args.saturation_form)),
    })

    # --- optimizer: the refiner's parameters only (the backbone is frozen, outside it and the EMA) --
    train_step = make_train_step(model, args, device)
    state = TrainingState(model=model, train_step=train_step,
                          config={**vars(args), "model": model_spec(model, refiner_kwargs(args)),
                                  "refiner": backbone.record()})

    # --- resume -------------------------------------------------------------------------------
    run = Run(args, state, device, model_inputs=refiner_inputs)
    batches = run.train_batches(train_set)

    # --- loop ---------------------------------------------------------------------------------
    with run.training(val_loader(val_set, workers=min(args.workers, 2))):
        if run.fresh:
            log_backbone_baseline(run)
        while run.step < args.steps:
            inp, base, target = backbone.batch(next(batches), device, args.amp)
            with autocast(device, args.amp):
                refined = train_model(torch.cat([base, inp], 1))
            losses = criterion(refined.float(), target, inp)
            train_step(losses["loss"])
            # --- validation / checkpoint: logged, validated and saved at their intervals ----------
            run.end_step(losses)
    return run


if __name__ == "__main__":
    run_cli(main)
