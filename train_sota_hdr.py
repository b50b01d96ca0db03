"""Restormer Base + zone-aware loss + VGG perceptual + colour consistency on 512 crops: SOTA HDR.

CATALOG.md "train_sota_hdr.py": separate weights for the as-shot photo's windows, shadows and
midtones, from the catalog's analysis of the edited targets -- windows only need about -7 brightness,
not aggressive darkening, so each zone's mean brightness must match the edit's (losses/zone_aware.py);
plus VGG19 perceptual features and the RGB angle between output and target (colour consistency).
The catalog lists no weights; the defaults below are ours. VGG19 needs torchvision's ImageNet weights
(--vgg-weights; the smoke test uses random ones).

Usage:
    python train_sota_hdr.py --data /path/to/pairs --vgg-weights /path/to/vgg19-dcbb9e9d.pth
    python train_sota_hdr.py                                   # built-in demo data, VGG from torchvision's cache
    python train_sota_hdr.py --data DATA --resume runs/train_sota_hdr
CPU smoke test (seconds):
    python train_sota_hdr.py --steps 4 --crop 32 --batch-size 2 --dim 8 --num-blocks 1 1 1 1 \
        --num-refinement-blocks 1 --heads 1 1 1 1 --val-every 2 --vgg-weights random --out /tmp/smoke
"""

from data.build import build_datasets
from data.loaders import val_loader
from losses import CombinedLoss
from losses.color_angle import ColorConsistencyLoss
from losses.perceptual import VGGPerceptualLoss, add_vgg_args
from losses.window import WINDOW_THRESHOLD
from losses.zone_aware import (BRIGHTNESS_WEIGHT, MIDTONE_WEIGHT, SHADOW_THRESHOLD, SHADOW_WEIGHT,
                               WINDOW_WEIGHT, ZoneAwareLoss)
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
    parser.add_argument("--zone-weight", type=float, default=1.0, help="weight of the whole zone-aware term")
    parser.add_argument("--window-zone-weight", type=float, default=WINDOW_WEIGHT)
    parser.add_argument("--shadow-zone-weight", type=float, default=SHADOW_WEIGHT)
    parser.add_argument("--midtone-zone-weight", type=float, default=MIDTONE_WEIGHT)
    parser.add_argument("--zone-brightness-weight", type=float, default=BRIGHTNESS_WEIGHT,
                        help="each zone's mean-brightness error, relative to its L1")
    parser.add_argument("--window-threshold", type=float, default=WINDOW_THRESHOLD)
    parser.add_argument("--shadow-threshold", type=float, default=SHADOW_THRESHOLD)
    parser.add_argument("--perceptual-weight", type=float, default=0.1)
    parser.add_argument("--color-weight", type=float, default=0.5, help="colour consistency (RGB angle)")
    args = parse_args(parser, argv, DEMO_BUDGET, script="train_sota_hdr")

    # --- setup --------------------------------------------------------------------------------
    device, run_dir = setup(args)

    # --- data ---------------------------------------------------------------------------------
    train_set, val_set = build_datasets(args)

    # --- model --------------------------------------------------------------------------------
    model_kwargs = restormer_kwargs(args)
    model = Restormer(**model_kwargs, grad_checkpoint=args.grad_checkpoint)
    train_model = prepare_model(model, args, device, "Restormer")

    # --- loss ---------------------------------------------------------------------------------
    zone_loss = ZoneAwareLoss(args.window_zone_weight, args.shadow_zone_weight, args.midtone_zone_weight,
                              args.zone_brightness_weight, args.window_threshold, args.shadow_threshold)
    criterion = CombinedLoss({
        "zone": (args.zone_weight, zone_loss),
        "perceptual": (args.perceptual_weight,
                       VGGPerceptualLoss(vgg_weights=args.vgg_weights) if args.perceptual_weight else None),
        "color": (args.color_weight, ColorConsistencyLoss()),
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
                # VGG's convolutions in mixed precision too; each loss does its own arithmetic in fp32.
                losses = criterion(pred.float(), target, inp)
            train_step(losses["loss"])
            # --- validation / checkpoint: logged, validated and saved at their intervals ----------
            run.end_step(losses)
    return run


if __name__ == "__main__":
    run_cli(main)
