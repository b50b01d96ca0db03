"""Restormer Base + a unified HDR loss: pixel + window + colour + edge + perceptual + frequency.

CATALOG.md "Optimal Unified HDR": one loss covering every aspect the other recipes target separately,
composed from the library's terms (each logged on its own): L1 for the whole image, window-aware L1
for blown-out regions (losses/window.py), CIELAB Delta E for colour (losses/lab.py), Sobel-gradient L1
for edges (losses/edge.py), VGG19 features (losses/perceptual.py) and the focal frequency loss
(losses/frequency.py). The catalog gives no weights; these defaults are this codebase's.

Usage:
    python train_restormer_optimal.py --data /path/to/pairs --vgg-weights vgg19-dcbb9e9d.pth
    python train_restormer_optimal.py --vgg-weights random               # built-in demo data, code check
    python train_restormer_optimal.py --data DATA --resume runs/train_restormer_optimal
CPU smoke test (seconds):
    python train_restormer_optimal.py --steps 4 --crop 32 --batch-size 2 --dim 8 \
        --num-blocks 1 1 1 1 --num-refinement-blocks 1 --heads 1 1 1 1 --val-every 2 \
        --vgg-weights random --out /tmp/smoke
"""

from data.build import build_datasets
from data.loaders import val_loader
from losses import CombinedLoss, L1Loss, WindowAwareLoss
from losses.edge import EdgeLoss
from losses.frequency import FocalFrequencyLoss
from losses.lab import DeltaELoss
from losses.perceptual import VGGPerceptualLoss, add_vgg_args
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
    add_vgg_args(parser)
    parser.add_argument("--l1-weight", type=float, default=1.0)
    parser.add_argument("--window-weight", type=float, default=0.5, help="L1 over the over-exposed input region")
    parser.add_argument("--color-weight", type=float, default=0.5, help="mean Delta E 76 / 100")
    parser.add_argument("--edge-weight", type=float, default=0.2, help="L1 of Sobel gradients")
    parser.add_argument("--perceptual-weight", type=float, default=0.1, help="VGG19 feature L1")
    parser.add_argument("--frequency-weight", type=float, default=1.0, help="focal frequency loss")
    parser.add_argument("--window-threshold", type=float, default=WINDOW_THRESHOLD,
                        help="input luma above which a pixel counts as over-exposed (soft)")
    parser.add_argument("--window-softness", type=float, default=WINDOW_SOFTNESS)
    args = parse_args(parser, argv, DEMO_BUDGET, script="train_restormer_optimal")

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
        "l1": (args.l1_weight, L1Loss()),
        "window": (args.window_weight, WindowAwareLoss(args.window_threshold, args.window_softness)),
        "color": (args.color_weight, DeltaELoss()),
        "edge": (args.edge_weight, EdgeLoss()),
        # VGG19 is only loaded when used (a weight-0 term is never built or computed).
        "perceptual": (args.perceptual_weight,
                       VGGPerceptualLoss(vgg_weights=args.vgg_weights) if args.perceptual_weight else None),
        "frequency": (args.frequency_weight, FocalFrequencyLoss()),
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
