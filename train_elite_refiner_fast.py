"""Frozen Restormer backbone + a small colour refiner, fast loss: Charbonnier + 3x HSV.

CATALOG.md "Fast Elite Refiner": the full refiner's loss (train_elite_color_refiner.py) without its
VGG perceptual, focal-frequency and histogram terms, for rapid iteration; the catalog says 40%
faster. tools/bench_refiner.py runs this recipe and the full one with the same flags on the same
machine, one after the other, and prints the measured ratio of their training throughputs.

The backbone (--backbone) is frozen and its output cached on disk once per photo (utils/refiner.py);
the refiner (models/refiner.py) starts as the identity on it. enhance.py / evaluate.py run backbone
+ refiner from this run's folder.

Usage:
    python train_elite_refiner_fast.py --backbone runs/train_restormer_512_combined_loss --data /path/to/pairs
    python train_elite_refiner_fast.py --backbone BACKBONE --resume runs/train_elite_refiner_fast
BACKBONE below: any Restormer run folder, e.g. the --out of train_restormer_512_combined_loss.py's smoke test.
CPU smoke test (seconds):
    python train_elite_refiner_fast.py --backbone BACKBONE --steps 4 --crop 32 --batch-size 2 \
        --refiner-width 8 --refiner-blocks 1 --backbone-tile 0 --val-every 2 --out /tmp/smoke
"""
import torch

from data.build import build_datasets
from data.loaders import val_loader
from losses import CharbonnierLoss, CombinedLoss, HSVLoss
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
    parser.add_argument("--charbonnier-weight", type=float, default=1.0)
    parser.add_argument("--hsv-weight", type=float, default=3.0)
    args = parse_args(parser, argv, DEMO_BUDGET, script="train_elite_refiner_fast")

    # --- setup --------------------------------------------------------------------------------
    device, run_dir = setup(args)
    backbone = FrozenBackbone.from_args(args, device)

    # --- data: (input, cached backbone output, target), cropped and flipped together -------------
    train_set, val_set = build_datasets(args, aligned=backbone.aligned_outputs)

    # --- model --------------------------------------------------------------------------------
    model = build_refiner(args)
    train_model = prepare_model(model, args, device, "ColorRefiner")

    # --- loss: Charbonnier + 3x HSV (hue as chroma-plane vector, saturation, value) ------------------
    criterion = CombinedLoss({
        "charbonnier": (args.charbonnier_weight, CharbonnierLoss()),
        "hsv": (args.hsv_weight, HSVLoss()),
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
