"""DAT (Dual Aggregation Transformer, ICCV 2023) + Charbonnier + SSIM + LPIPS + LAB dE + histogram.

CATALOG.md "DAT": blocks alternate spatial window attention and channel attention, each mixed with a
depth-wise conv branch (models/dat.py, the official zhengchen1999/DAT architecture at upscale=1: a
restoration network at the photo's size). Optimizer as the official DAT training (BasicSR): Adam
lr 2e-4, betas (0.9, 0.99), no weight decay, no warm-up, the lr halved at 50/80/90/95 % of the steps,
EMA 0.999. The defaults are DAT's published size (embed 180, 6 groups of 6 blocks, windows 8x32);
every block runs at the full crop resolution, hence 256-px crops. DAT's BatchNorm layers need
--batch-size >= 2. LPIPS needs the lpips package (pip install -r requirements-extras.txt) and the
AlexNet ImageNet weights (--lpips-weights PATH); nothing is downloaded. --pretrained takes x1
weights of this architecture; the published SR files (x2-x4) load strictly into DAT(upscale=2..4).

Usage:
    python train_dat.py --data /path/to/pairs --lpips-weights alexnet-owt-7be5be79.pth   # the real recipe
    python train_dat.py --lpips-weights alexnet-owt-7be5be79.pth                         # built-in demo data
    python train_dat.py --data DATA --resume runs/train_dat
CPU smoke test (seconds):
    python train_dat.py --steps 4 --crop 32 --batch-size 2 --embed-dim 64 --depth 2 --num-heads 2 \
        --split-size 4 8 --lpips-weights random --val-every 2 --out /tmp/smoke
"""
from data.build import build_datasets
from data.loaders import val_loader
from losses import CharbonnierLoss, CombinedLoss
from losses.histogram import HISTOGRAM_BINS, HistogramLoss
from losses.lab import DeltaELoss
from losses.lpips import LPIPSLoss, add_lpips_args
from losses.structural import SSIMLoss
from models.dat import DAT
from utils.checkpoint import model_spec
from utils.cli import add_schedule_args, base_parser, parse_args, run_cli
from utils.run import Run, prepare_model, setup
from utils.training import TrainingState, autocast, make_train_step

# Official DAT training (options/Train/train_DAT_x2.yml): Adam, no decay, no warm-up.
RECIPE = dict(lr=2e-4, weight_decay=0.0, warmup=0, grad_clip=0.0, crop=256)
ADAM_BETAS = (0.9, 0.99)
# No --data and no GPU: a 2-group, width-64 DAT on small crops for a CPU demo.
DEMO_BUDGET = dict(steps=300, crop=64, batch_size=4, embed_dim=64, depth=[2, 2], num_heads=[2, 2],
                   split_size=[4, 8], lr=5e-4, val_every=100, save_every=100, log_every=10, workers=2, ema=0.99)


def main(argv=None):
    # --- config -----------------------------------------------------------------------------
    parser = base_parser(__doc__, **RECIPE)
    add_schedule_args(parser, optimizer="adam", schedule="multistep")
    model_args = parser.add_argument_group("model (DAT; defaults: options/Test/test_DAT_x4.yml)")
    model_args.add_argument("--embed-dim", type=int, default=180)
    model_args.add_argument("--depth", type=int, nargs="+", default=[6] * 6, help="blocks per residual group")
    model_args.add_argument("--num-heads", type=int, nargs="+", default=[6] * 6, help="heads per group")
    model_args.add_argument("--split-size", type=int, nargs=2, default=[8, 32], help="window rows, columns")
    model_args.add_argument("--expansion-factor", type=float, default=4.0, help="feed-forward width / embed")
    model_args.add_argument("--drop-path-rate", type=float, default=0.1)
    parser.add_argument("--charbonnier-weight", type=float, default=1.0)
    parser.add_argument("--ssim-weight", type=float, default=0.2, help="1 - SSIM")
    parser.add_argument("--lpips-weight", type=float, default=0.1)
    parser.add_argument("--lab-weight", type=float, default=0.5, help="CIELAB dE76 / 100")
    parser.add_argument("--histogram-weight", type=float, default=0.2, help="per-channel histogram EMD")
    parser.add_argument("--histogram-bins", type=int, default=HISTOGRAM_BINS)
    add_lpips_args(parser)
    args = parse_args(parser, argv, DEMO_BUDGET, script="train_dat")
    if len(args.depth) != len(args.num_heads):
        raise ValueError(f"--depth and --num-heads need one value per group, got {args.depth} and {args.num_heads}")
    if args.batch_size < 2:
        raise ValueError("DAT's BatchNorm layers need --batch-size >= 2 in training")

    # --- setup --------------------------------------------------------------------------------
    device, run_dir = setup(args)

    # --- data ---------------------------------------------------------------------------------
    train_set, val_set = build_datasets(args)

    # --- model --------------------------------------------------------------------------------
    # img_size=64 as published: the shifted blocks' mask buffers are built for it, so official
    # files load strictly; other sizes get their masks from the model's per-size cache.
    model_kwargs = dict(upscale=1, in_chans=3, img_size=64, img_range=1.0, split_size=list(args.split_size),
                        depth=list(args.depth), embed_dim=args.embed_dim, num_heads=list(args.num_heads),
                        expansion_factor=args.expansion_factor, drop_path_rate=args.drop_path_rate,
                        resi_connection="1conv", upsampler="pixelshuffle")
    model = DAT(**model_kwargs, use_chk=args.grad_checkpoint)
    train_model = prepare_model(model, args, device, "DAT")

    # --- loss ---------------------------------------------------------------------------------
    criterion = CombinedLoss({
        "charbonnier": (args.charbonnier_weight, CharbonnierLoss()),
        "ssim": (args.ssim_weight, SSIMLoss()),
        "lpips": (args.lpips_weight, LPIPSLoss(args.lpips_weights)),
        "lab": (args.lab_weight, DeltaELoss()),
        "histogram": (args.histogram_weight, HistogramLoss(args.histogram_bins)),
    }).to(device)

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
