"""Restormer Base + SOTA colour losses on 512 crops: focal frequency + LAB + multi-scale colour + histogram.

CATALOG.md "train_restormer_512_sota_color.py": colour accuracy over structure, with the colour losses
of recent papers: focal frequency loss (Jiang et al., ICCV 2021), CIELAB dE76 (perceptual colour
difference), LAB chroma compared at several scales (regional colour casts) and differentiable
histogram matching (the target's spread of colours, not their average). An L1 term anchors the pixels.
The catalog lists no weights; the defaults below are ours.

Usage:
    python train_restormer_512_sota_color.py --data /path/to/pairs            # the real recipe
    python train_restormer_512_sota_color.py                                  # built-in demo data
    python train_restormer_512_sota_color.py --data DATA --resume runs/train_restormer_512_sota_color
CPU smoke test (seconds):
    python train_restormer_512_sota_color.py --steps 4 --crop 32 --batch-size 2 --dim 8 \
        --num-blocks 1 1 1 1 --num-refinement-blocks 1 --heads 1 1 1 1 --val-every 2 --out /tmp/smoke
"""

from data.build import build_datasets
from data.loaders import val_loader
from losses import CombinedLoss, L1Loss
from losses.frequency import FocalFrequencyLoss
from losses.histogram import HISTOGRAM_BINS, HistogramLoss
from losses.lab import DeltaELoss, MultiScaleColorLoss
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
    parser.add_argument("--frequency-weight", type=float, default=1.0, help="focal frequency loss")
    parser.add_argument("--frequency-alpha", type=float, default=1.0, help="focal frequency loss exponent")
    parser.add_argument("--lab-weight", type=float, default=0.5, help="CIELAB dE76 / 100")
    parser.add_argument("--multiscale-color-weight", type=float, default=0.5, help="LAB chroma at scales 1-8")
    parser.add_argument("--histogram-weight", type=float, default=0.2, help="per-channel histogram EMD")
    parser.add_argument("--histogram-bins", type=int, default=HISTOGRAM_BINS)
    args = parse_args(parser, argv, DEMO_BUDGET, script="train_restormer_512_sota_color")

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
        "frequency": (args.frequency_weight, FocalFrequencyLoss(args.frequency_alpha)),
        "lab": (args.lab_weight, DeltaELoss()),
        "multiscale_color": (args.multiscale_color_weight, MultiScaleColorLoss()),
        "histogram": (args.histogram_weight, HistogramLoss(args.histogram_bins)),
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
