"""Frozen Restormer backbone + a small colour refiner, full loss with adaptive weights and a curriculum.

CATALOG.md "Full Elite Refiner": Charbonnier + HSV + LAB dE76 + VGG19 perceptual + focal frequency +
histogram, combined with learned homoscedastic-uncertainty weights (Kendall et al. 2018,
losses/weighting.py: L = sum_k exp(-s_k) L_k + s_k; the weights exp(-s_k) are logged every interval as
``weight_<term>``); EMA weights for validation and checkpoints; an easy-to-hard curriculum
(data/curriculum.py): pairs ranked by their input-target difference, early steps draw from the
easiest --curriculum-start of them, the pool grows linearly to all pairs over the first --curriculum
of the steps (logged as ``curriculum_fraction``).

The backbone (--backbone) is frozen and its output cached on disk once per photo (utils/refiner.py);
the refiner (models/refiner.py) starts as the identity on it. enhance.py / evaluate.py run backbone
+ refiner from this run's folder. The VGG term needs torchvision's VGG19 weights (--vgg-weights).

Usage:
    python train_elite_color_refiner.py --backbone runs/train_restormer_512_combined_loss --data /path/to/pairs
    python train_elite_color_refiner.py --backbone BACKBONE --resume runs/train_elite_color_refiner
BACKBONE below: any Restormer run folder, e.g. the --out of train_restormer_512_combined_loss.py's smoke test.
CPU smoke test (seconds):
    python train_elite_color_refiner.py --backbone BACKBONE --steps 4 --crop 32 --batch-size 2 \
        --refiner-width 8 --refiner-blocks 1 --backbone-tile 0 --val-every 2 --vgg-weights random --out /tmp/smoke
"""
import torch

from data.build import build_datasets
from data.curriculum import CurriculumStream, rank_by_difficulty
from data.loaders import PatchSchedule, val_loader
from losses import CharbonnierLoss, HSVLoss
from losses.frequency import FocalFrequencyLoss
from losses.histogram import HistogramLoss
from losses.lab import DeltaELoss
from losses.perceptual import VGGPerceptualLoss, add_vgg_args
from losses.weighting import UncertaintyWeightedLoss
from utils.checkpoint import model_spec
from utils.cli import base_parser, parse_args, run_cli
from utils.refiner import (FrozenBackbone, add_refiner_args, build_refiner, log_backbone_baseline, refiner_inputs,
                           refiner_kwargs)
from utils.run import Run, prepare_model, setup
from utils.training import TrainingState, autocast, make_train_step

# No --data and no GPU: the demo photos, a refiner small enough for a few minutes on 2 cores.
DEMO_BUDGET = dict(steps=600, crop=96, batch_size=4, lr=1e-3, warmup=20, grad_clip=0.0,
                   val_every=150, save_every=150, log_every=10, workers=2, ema=0.99)
# The learned weights shift the total (the + s_k terms); the smoke test follows a raw term instead.
SMOKE_LOSS_KEY = "charbonnier"


def main(argv=None):
    # --- config -----------------------------------------------------------------------------
    parser = base_parser(__doc__, lr=2e-4, warmup=500, grad_clip=0.0, steps=20_000)
    add_refiner_args(parser)
    add_vgg_args(parser)
    parser.add_argument("--uncertainty-lr", type=float, default=1e-3,
                        help="peak lr of the log-variances s_k (same schedule, no weight decay)")
    parser.add_argument("--curriculum", type=float, default=0.3, metavar="FRACTION",
                        help="share of --steps over which the pool grows to every pair (0: no curriculum)")
    parser.add_argument("--curriculum-start", type=float, default=0.25,
                        help="share of the pairs, easiest first, that the first step draws from")
    args = parse_args(parser, argv, DEMO_BUDGET, script="train_elite_color_refiner")

    # --- setup --------------------------------------------------------------------------------
    device, run_dir = setup(args)
    backbone = FrozenBackbone.from_args(args, device)

    # --- data: (input, cached backbone output, target), cropped and flipped together -------------
    train_set, val_set = build_datasets(args, aligned=backbone.aligned_outputs)
    ranking = rank_by_difficulty(train_set.pairs)

    # --- model --------------------------------------------------------------------------------
    model = build_refiner(args)
    train_model = prepare_model(model, args, device, "ColorRefiner")

    # --- loss: six terms, learned homoscedastic-uncertainty weights ---------------------------------
    criterion = UncertaintyWeightedLoss({
        "charbonnier": CharbonnierLoss(),
        "hsv": HSVLoss(),
        "delta_e": DeltaELoss(),
        "perceptual": VGGPerceptualLoss(vgg_weights=args.vgg_weights),
        "frequency": FocalFrequencyLoss(),
        "histogram": HistogramLoss(),
    }).to(device)

    # --- optimizer: the refiner's parameters only (the backbone is frozen, outside it and the EMA) --
    # the s_k are a second param group of the same step: their own peak lr, no weight decay
    train_step = make_train_step(model, args, device, extra_groups=[{
        "params": list(criterion.uncertainty.parameters()), "lr": args.uncertainty_lr, "weight_decay": 0.0}])
    state = TrainingState(model=model, train_step=train_step,
                          config={**vars(args), "model": model_spec(model, refiner_kwargs(args)),
                                  "refiner": backbone.record()},
                          extra_modules={"loss_weights": criterion.uncertainty})

    # --- resume -------------------------------------------------------------------------------
    run = Run(args, state, device, model_inputs=refiner_inputs)
    # the ramp in draws: the images its steps take (batch x --grad-accum, per --progressive stage)
    schedule = PatchSchedule.parse(args.progressive, args.steps) if args.progressive else \
        PatchSchedule.constant(args.batch_size)
    curriculum = CurriculumStream(ranking, args.seed, start_fraction=args.curriculum_start,
                                  ramp_draws=schedule.draws_before(round(args.curriculum * args.steps), args.grad_accum))
    batches = run.train_batches(train_set, stream=curriculum)

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
            draws = run.schedule.draws_before(run.step, args.grad_accum)
            losses["curriculum_fraction"] = torch.tensor(curriculum.fraction(draws), device=device)
            # --- validation / checkpoint: logged, validated and saved at their intervals ----------
            run.end_step(losses)
    return run


if __name__ == "__main__":
    run_cli(main)
