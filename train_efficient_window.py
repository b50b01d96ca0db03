"""Restormer Base + adaptive zone loss (per-image percentile thresholds) + colour-direction loss.

CATALOG.md "Efficient Zone-Based Training": shadows / midtones / highlights are split at each image's
own luminance percentiles (not at fixed thresholds), so the zones follow every photo's exposure; each
zone's mean L1 gets its weight (losses/zones.py). The colour-direction term asks the output to change
each pixel's colour the way the editor did (1 - cosine of the two change vectors, losses/direction.py).
The thresholds come from a strided subsample, so the loss costs little memory or time at any crop.

Usage:
    python train_efficient_window.py --data /path/to/pairs              # the real recipe
    python train_efficient_window.py                                    # built-in demo data
    python train_efficient_window.py --data DATA --resume runs/train_efficient_window
CPU smoke test (seconds):
    python train_efficient_window.py --steps 4 --crop 32 --batch-size 2 --dim 8 \
        --num-blocks 1 1 1 1 --num-refinement-blocks 1 --heads 1 1 1 1 --val-every 2 --out /tmp/smoke
"""

from data.build import build_datasets
from data.loaders import val_loader
from losses import CombinedLoss
from losses.direction import ColorDirectionLoss
from losses.zones import (AdaptiveZoneLoss, HIGHLIGHT_PERCENTILE, HIGHLIGHT_WEIGHT, MIDTONE_WEIGHT,
                          SHADOW_PERCENTILE, SHADOW_WEIGHT, ZONE_SOFTNESS)
from models.restormer import Restormer
from utils.checkpoint import model_spec
from utils.cli import add_restormer_args, base_parser, parse_args, restormer_kwargs, run_cli
from utils.run import Run, prepare_model, setup
from utils.training import TrainingState, autocast, make_train_step

# No --data and no GPU: a small Restormer on small crops, so the demo finishes in ~10 min on 2 cores.
DEMO_BUDGET = dict(steps=400, crop=96, batch_size=4, dim=16, num_blocks=[1, 2, 2, 2],
                   num_refinement_blocks=1, heads=[1, 2, 4, 8], lr=1e-3, warmup=20, grad_clip=0.0,
                   val_every=100, save_every=100, log_every=10, workers=2, ema=0.99)


def main(argv=None):
    # --- config -----------------------------------------------------------------------------
    parser = base_parser(__doc__)
    add_restormer_args(parser)
    parser.add_argument("--zone-weight", type=float, default=1.0, help="weight of the whole zone loss")
    parser.add_argument("--direction-weight", type=float, default=0.5, help="weight of the colour-direction loss")
    parser.add_argument("--shadow-percentile", type=float, default=SHADOW_PERCENTILE,
                        help="an image's pixels darker than this percentile of its luma are its shadows")
    parser.add_argument("--highlight-percentile", type=float, default=HIGHLIGHT_PERCENTILE,
                        help="an image's pixels brighter than this percentile of its luma are its highlights")
    parser.add_argument("--zone-softness", type=float, default=ZONE_SOFTNESS, help="luma width of the zone edges")
    parser.add_argument("--shadow-weight", type=float, default=SHADOW_WEIGHT)
    parser.add_argument("--midtone-weight", type=float, default=MIDTONE_WEIGHT)
    parser.add_argument("--highlight-weight", type=float, default=HIGHLIGHT_WEIGHT)
    args = parse_args(parser, argv, DEMO_BUDGET, script="train_efficient_window")

    # --- setup --------------------------------------------------------------------------------
    device, run_dir = setup(args)

    # --- data ---------------------------------------------------------------------------------
    train_set, val_set = build_datasets(args)

    # --- model --------------------------------------------------------------------------------
    model_kwargs = restormer_kwargs(args)
    model = Restormer(**model_kwargs, grad_checkpoint=args.grad_checkpoint)
    train_model = prepare_model(model, args, device, "Restormer")

    # --- loss ---------------------------------------------------------------------------------
    criterion = CombinedLoss({
        "zones": (args.zone_weight, AdaptiveZoneLoss(args.shadow_percentile, args.highlight_percentile,
                                                     args.zone_softness, args.shadow_weight,
                                                     args.midtone_weight, args.highlight_weight)),
        "direction": (args.direction_weight, ColorDirectionLoss()),
    }).to(device)

    # --- optimizer: AdamW + cosine warm-up, EMA, fp16 loss scaling, clipping, non-finite guard ----
    train_step = make_train_step(model, args, device)
    config = {**vars(args), "model": model_spec(model, model_kwargs)}
    state = TrainingState(model=model, train_step=train_step, config=config)

    # --- resume -------------------------------------------------------------------------------
    run = Run(args, state, device)
    batches = run.train_batches(train_set)

    # --- loop ---------------------------------------------------------------------------------
    with run.training(val_loader(val_set, workers=min(args.workers, 2))):
        while run.step < args.steps:
            batch = next(batches)
            inp = batch["input"].to(device, non_blocking=True)
            target = batch["target"].to(device, non_blocking=True)
            with autocast(device, args.amp):
                pred = train_model(inp)
            losses = criterion(pred.float(), target, inp)
            train_step(losses["loss"])
            # --- validation / checkpoint: logged, validated and saved at their intervals ----------
            run.end_step(losses)
    return run


if __name__ == "__main__":
    run_cli(main)
