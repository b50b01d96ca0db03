"""HAT (Hybrid Attention Transformer) + Charbonnier + LAB dE + HSV + histogram: multi-loss for colour accuracy.

CATALOG.md "HAT": window self-attention, channel attention and overlapping cross-attention combined
(models/hat.py, the official XPixelGroup/HAT architecture at upscale=1: a restoration network at the
photo's size). Optimizer as the official HAT training (BasicSR): Adam lr 2e-4, betas (0.9, 0.99), no
weight decay, no warm-up, the lr halved at 50/80/90/95 % of the steps, EMA 0.999. The defaults are
HAT's published size (embed 180, 6 groups of 6 blocks, window 16); at upscale=1 every block runs at
the full crop resolution, hence 256-px crops (add --grad-checkpoint or --amp bf16 on small GPUs).
--pretrained takes x1 weights of this architecture (e.g. a run of this script); the published SR
files (x2-x4) load strictly into HAT(upscale=2..4), not into this x1 recipe.

Usage:
    python train_hat.py --data /path/to/pairs                    # the real recipe
    python train_hat.py                                          # built-in demo data
    python train_hat.py --data DATA --resume runs/train_hat
CPU smoke test (seconds):
    python train_hat.py --steps 4 --crop 32 --batch-size 2 --embed-dim 12 --depths 1 --num-heads 2 \
        --window-size 8 --squeeze-factor 4 --val-every 2 --out /tmp/smoke
"""
from data.build import build_datasets
from data.loaders import val_loader
from losses import CharbonnierLoss, CombinedLoss, HSVLoss
from losses.color import DEFAULT_SATURATION_FORM, SATURATION_FORM_HELP, SATURATION_FORMS
from losses.histogram import HISTOGRAM_BINS, HistogramLoss
from losses.lab import DeltaELoss
from models.hat import HAT
from utils.checkpoint import model_spec
from utils.cli import add_schedule_args, base_parser, parse_args, run_cli
from utils.run import Run, prepare_model, setup
from utils.training import TrainingState, autocast, make_train_step

# Official HAT training (options/train/train_HAT_SRx2_from_scratch.yml): Adam, no decay, no warm-up.
RECIPE = dict(lr=2e-4, weight_decay=0.0, warmup=0, grad_clip=0.0, crop=256)
ADAM_BETAS = (0.9, 0.99)
# No --data and no GPU: a 2-group, width-24 HAT on small crops for a CPU demo.
DEMO_BUDGET = dict(steps=300, crop=64, batch_size=4, embed_dim=24, depths=[2, 2], num_heads=[2, 2],
                   window_size=8, squeeze_factor=6, lr=5e-4, val_every=100, save_every=100, log_every=10,
                   workers=2, ema=0.99)


def main(argv=None):
    # --- config -----------------------------------------------------------------------------
    parser = base_parser(__doc__, **RECIPE)
    add_schedule_args(parser, optimizer="adam", schedule="multistep")
    model_args = parser.add_argument_group("model (HAT; defaults: options/test/HAT_SRx4.yml)")
    model_args.add_argument("--embed-dim", type=int, default=180)
    model_args.add_argument("--depths", type=int, nargs="+", default=[6] * 6, help="blocks per residual group")
    model_args.add_argument("--num-heads", type=int, nargs="+", default=[6] * 6, help="heads per group")
    model_args.add_argument("--window-size", type=int, default=16)
    model_args.add_argument("--mlp-ratio", type=float, default=2.0)
    model_args.add_argument("--compress-ratio", type=int, default=3, help="channel-attention conv squeeze")
    model_args.add_argument("--squeeze-factor", type=int, default=30, help="channel attention reduction")
    model_args.add_argument("--overlap-ratio", type=float, default=0.5)
    model_args.add_argument("--drop-path-rate", type=float, default=0.1)
    parser.add_argument("--charbonnier-weight", type=float, default=1.0)
    parser.add_argument("--lab-weight", type=float, default=0.5, help="CIELAB dE76 / 100")
    parser.add_argument("--hsv-weight", type=float, default=0.1, help="HSV hue (chroma plane) + saturation + value")
    parser.add_argument("--saturation-form", choices=SATURATION_FORMS, default=DEFAULT_SATURATION_FORM,
                        help=SATURATION_FORM_HELP)
    parser.add_argument("--histogram-weight", type=float, default=0.2, help="per-channel histogram EMD")
    parser.add_argument("--histogram-bins", type=int, default=HISTOGRAM_BINS)
    args = parse_args(parser, argv, DEMO_BUDGET, script="train_hat")
    if len(args.depths) != len(args.num_heads):
        raise ValueError(f"--depths and --num-heads need one value per group, got {args.depths} and {args.num_heads}")

    # --- setup --------------------------------------------------------------------------------
    device, run_dir = setup(args)

    # --- data ---------------------------------------------------------------------------------
    train_set, val_set = build_datasets(args)

    # --- model --------------------------------------------------------------------------------
    # upsampler='pixelshuffle': the official default '' has no head (its forward returns the input);
    # with upscale=1 the pixel-shuffle head is conv - LeakyReLU - conv at the input's size.
    model_kwargs = dict(upscale=1, in_chans=3, img_size=64, window_size=args.window_size,
                        compress_ratio=args.compress_ratio, squeeze_factor=args.squeeze_factor, conv_scale=0.01,
                        overlap_ratio=args.overlap_ratio, img_range=1.0, depths=list(args.depths),
                        embed_dim=args.embed_dim, num_heads=list(args.num_heads), mlp_ratio=args.mlp_ratio,
                        drop_path_rate=args.drop_path_rate, upsampler="pixelshuffle", resi_connection="1conv")
    model = HAT(**model_kwargs, use_checkpoint=args.grad_checkpoint)
    train_model = prepare_model(model, args, device, "HAT")

    # --- loss ---------------------------------------------------------------------------------
    criterion = CombinedLoss({
        "charbonnier": (args.charbonnier_weight, CharbonnierLoss()),
        "lab": (args.lab_weight, DeltaELoss()),
        "hsv": (args.hsv_weight, HSVLoss(saturation_form=args.saturation_form)),
        "histogram": (args.histogram_weight, HistogramLoss(args.histogram_bins)),
    })

    # --- optimizer: Adam + multistep decay (--optimizer/--schedule), EMA, clipping, non-finite guard --
    train_step = make_train_step(model, args, device, betas=ADAM_BETAS)
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
