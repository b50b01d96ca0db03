"""Restormer with architectural gain constraints + L1 + window-aware loss on 512 crops: the production model.

CATALOG.md "train_production.py": the network predicts a per-pixel RGB gain that multiplies the
as-shot photo, and the architecture bounds it by region -- over-exposed (window) pixels may only
darken, gain in [0.3, 1.0], interior pixels only brighten, gain in [1.0, 3.0] -- so the model cannot
make the wrong kind of change (models/gain.py). Loss: L1 (1.0) + window-aware L1 (0.5), as the
catalog's baseline. The gain ranges and the window threshold are stored with the checkpoint, so
enhance.py rebuilds the same constrained model.

Usage:
    python train_production.py --data /path/to/pairs                          # the real recipe
    python train_production.py                                                # built-in demo data
    python train_production.py --data DATA --resume runs/train_production
CPU smoke test (seconds):
    python train_production.py --steps 4 --crop 32 --batch-size 2 --dim 8 \
        --num-blocks 1 1 1 1 --num-refinement-blocks 1 --heads 1 1 1 1 --val-every 2 --out /tmp/smoke
"""

from data.build import build_datasets
from data.loaders import val_loader
from losses import CombinedLoss, L1Loss, WindowAwareLoss
from losses.window import WINDOW_SOFTNESS, WINDOW_THRESHOLD
from models.gain import GainRestormer, INTERIOR_GAIN, WINDOW_GAIN
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
    parser.add_argument("--window-gain", type=float, nargs=2, default=list(WINDOW_GAIN), metavar=("LOW", "HIGH"),
                        help="gain range of over-exposed (window) pixels: they may only darken")
    parser.add_argument("--interior-gain", type=float, nargs=2, default=list(INTERIOR_GAIN),
                        metavar=("LOW", "HIGH"), help="gain range of interior pixels: they may only brighten")
    parser.add_argument("--window-threshold", type=float, default=WINDOW_THRESHOLD,
                        help="input luma above which a pixel counts as over-exposed (soft), for model and loss")
    parser.add_argument("--window-softness", type=float, default=WINDOW_SOFTNESS)
    parser.add_argument("--l1-weight", type=float, default=1.0)
    parser.add_argument("--window-weight", type=float, default=0.5)
    args = parse_args(parser, argv, DEMO_BUDGET, script="train_production")

    # --- setup --------------------------------------------------------------------------------
    device, run_dir = setup(args)

    # --- data ---------------------------------------------------------------------------------
    train_set, val_set = build_datasets(args)

    # --- model --------------------------------------------------------------------------------
    model_kwargs = dict(restormer_kwargs(args), window_gain=list(args.window_gain),
                        interior_gain=list(args.interior_gain), threshold=args.window_threshold,
                        softness=args.window_softness)
    # --pretrained Restormer weights fit too: the gain model has exactly Restormer's parameters
    model = GainRestormer(**model_kwargs, grad_checkpoint=args.grad_checkpoint)
    train_model = prepare_model(model, args, device, "GainRestormer")

    # --- loss ---------------------------------------------------------------------------------
    criterion = CombinedLoss({
        "l1": (args.l1_weight, L1Loss()),
        "window": (args.window_weight, WindowAwareLoss(args.window_threshold, args.window_softness)),
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
