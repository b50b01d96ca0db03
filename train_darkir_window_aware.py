"""DarkIR + L1 + window-aware L1: DarkIR's frequency-domain blocks trained to recover blown-out windows.

CATALOG.md "DarkIR + Window Loss": DarkIR (models/darkir.py) with the window-aware loss of the
library (losses/window.py: extra L1 where the as-shot input is over-exposed), on top of L1 as in the
baseline recipe (L1 1.0 + window 0.5). The FFT blocks mix information across the whole image, which
helps fill a clipped window from the scene's global tone. Optimizer defaults follow DarkIR's
official training (lr 5e-4, weight decay 1e-3, no gradient clipping). --side-weight adds DarkIR's
optional auxiliary loss on its 1/8-scale side output (losses/side_output.py; off by default, as in
the official configs).

Usage:
    python train_darkir_window_aware.py --data /path/to/pairs             # the real recipe (DarkIR-m)
    python train_darkir_window_aware.py --data /path/to/pairs --pretrained DarkIR_384.pt --side-weight 0.8
    python train_darkir_window_aware.py                                   # built-in demo data
    python train_darkir_window_aware.py --data DATA --resume runs/train_darkir_window_aware
CPU smoke test (seconds):
    python train_darkir_window_aware.py --steps 4 --crop 32 --batch-size 2 --width 8 --enc-blocks 1 1 1 \
        --dec-blocks 1 1 1 --middle-blocks-enc 1 --middle-blocks-dec 1 --side-weight 0.5 --val-every 2 \
        --out /tmp/smoke
"""
from data.build import build_datasets
from data.loaders import val_loader
from losses import CombinedLoss, L1Loss, WindowAwareLoss
from losses.side_output import SideOutputLoss
from losses.window import WINDOW_SOFTNESS, WINDOW_THRESHOLD
from models.darkir import DarkIR
from utils.checkpoint import model_spec
from utils.cli import add_darkir_args, base_parser, darkir_kwargs, parse_args, run_cli
from utils.run import Run, prepare_model, setup
from utils.training import TrainingState, autocast, make_train_step

# DarkIR's official optimizer settings (cidautai/DarkIR options/train/*.yml).
RECIPE = dict(lr=5e-4, weight_decay=1e-3, grad_clip=0.0)
# No --data and no GPU: a width-16 DarkIR on small crops, so the demo finishes in minutes on 2 cores.
DEMO_BUDGET = dict(steps=400, crop=96, batch_size=4, width=16, lr=1e-3, warmup=20, val_every=100,
                   save_every=100, log_every=10, workers=2, ema=0.99)


def main(argv=None):
    # --- config -----------------------------------------------------------------------------
    parser = base_parser(__doc__, **RECIPE)
    add_darkir_args(parser)
    parser.add_argument("--l1-weight", type=float, default=1.0)
    parser.add_argument("--window-weight", type=float, default=0.5)
    parser.add_argument("--window-threshold", type=float, default=WINDOW_THRESHOLD,
                        help="input luma above which a pixel counts as over-exposed (soft)")
    parser.add_argument("--window-softness", type=float, default=WINDOW_SOFTNESS)
    parser.add_argument("--side-weight", type=float, default=0.0,
                        help="L1 of DarkIR's 1/8-scale side output against the downscaled target (0: off)")
    args = parse_args(parser, argv, DEMO_BUDGET, script="train_darkir_window_aware")

    # --- setup --------------------------------------------------------------------------------
    device, run_dir = setup(args)

    # --- data ---------------------------------------------------------------------------------
    train_set, val_set = build_datasets(args)

    # --- model --------------------------------------------------------------------------------
    model_kwargs = darkir_kwargs(args)
    model = DarkIR(**model_kwargs)
    train_model = prepare_model(model, args, device, "DarkIR")

    # --- loss ---------------------------------------------------------------------------------
    criterion = CombinedLoss({
        "l1": (args.l1_weight, L1Loss()),
        "window": (args.window_weight, WindowAwareLoss(args.window_threshold, args.window_softness)),
    })
    side_criterion = SideOutputLoss()

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
                side, pred = train_model(inp, side_loss=True)
            losses = criterion(pred.float(), target, inp)
            if args.side_weight > 0:
                side_value = side_criterion(side, target)
                losses["loss"] = losses["loss"] + args.side_weight * side_value
                losses["side"] = side_value.detach()
            train_step(losses["loss"])
            # --- validation / checkpoint: logged, validated and saved at their intervals ----------
            run.end_step(losses)
    return run


if __name__ == "__main__":
    run_cli(main)
