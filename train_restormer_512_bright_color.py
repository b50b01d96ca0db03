"""Restormer Base + L1 + window-aware + bright-region colour loss on 512 crops.

CATALOG.md "train_restormer_512_bright_color.py": colour accuracy specifically in the bright regions
(windows, sky, sunlit plants), where the as-shot photo is clipped towards white and the edit restores
blue and green. Besides L1 (1.0) and window-aware L1 (0.5), four terms inside the input's soft bright
region (losses/bright_color.py): hue angle, chroma, RGB L1 and histogram. The catalog lists no weights
for these; the defaults below are ours.

Usage:
    python train_restormer_512_bright_color.py --data /path/to/pairs          # the real recipe
    python train_restormer_512_bright_color.py                                # built-in demo data
    python train_restormer_512_bright_color.py --data DATA --resume runs/train_restormer_512_bright_color
CPU smoke test (seconds):
    python train_restormer_512_bright_color.py --steps 4 --crop 32 --batch-size 2 --dim 8 \
        --num-blocks 1 1 1 1 --num-refinement-blocks 1 --heads 1 1 1 1 --val-every 2 --out /tmp/smoke
"""

from data.build import build_datasets
from data.loaders import val_loader
from losses import CombinedLoss, L1Loss, WindowAwareLoss
from losses.bright_color import (BRIGHT_SOFTNESS, BRIGHT_THRESHOLD, BrightChromaLoss, BrightHistogramLoss,
                                 BrightHueLoss, BrightRGBLoss)
from losses.window import WINDOW_SOFTNESS, WINDOW_THRESHOLD
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
    parser.add_argument("--l1-weight", type=float, default=1.0)
    parser.add_argument("--window-weight", type=float, default=0.5)
    parser.add_argument("--window-threshold", type=float, default=WINDOW_THRESHOLD)
    parser.add_argument("--window-softness", type=float, default=WINDOW_SOFTNESS)
    parser.add_argument("--bright-hue-weight", type=float, default=0.1, help="hue angle error (0-2)")
    parser.add_argument("--bright-chroma-weight", type=float, default=0.5)
    parser.add_argument("--bright-rgb-weight", type=float, default=0.5)
    parser.add_argument("--bright-histogram-weight", type=float, default=0.2)
    parser.add_argument("--bright-threshold", type=float, default=BRIGHT_THRESHOLD,
                        help="input luma above which a pixel counts as bright (soft)")
    parser.add_argument("--bright-softness", type=float, default=BRIGHT_SOFTNESS)
    args = parse_args(parser, argv, DEMO_BUDGET, script="train_restormer_512_bright_color")

    # --- setup --------------------------------------------------------------------------------
    device, run_dir = setup(args)

    # --- data ---------------------------------------------------------------------------------
    train_set, val_set = build_datasets(args)

    # --- model --------------------------------------------------------------------------------
    model_kwargs = restormer_kwargs(args)
    model = Restormer(**model_kwargs, grad_checkpoint=args.grad_checkpoint)
    train_model = prepare_model(model, args, device, "Restormer")

    # --- loss ---------------------------------------------------------------------------------
    bright = dict(threshold=args.bright_threshold, softness=args.bright_softness)
    criterion = CombinedLoss({
        "l1": (args.l1_weight, L1Loss()),
        "window": (args.window_weight, WindowAwareLoss(args.window_threshold, args.window_softness)),
        "bright_hue": (args.bright_hue_weight, BrightHueLoss(**bright)),
        "bright_chroma": (args.bright_chroma_weight, BrightChromaLoss(**bright)),
        "bright_rgb": (args.bright_rgb_weight, BrightRGBLoss(**bright)),
        "bright_histogram": (args.bright_histogram_weight, BrightHistogramLoss(**bright)),
    })

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
