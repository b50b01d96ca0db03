"""MambaIR (state-space restoration) + Charbonnier + SSIM + LPIPS + LAB + histogram.

CATALOG.md "MambaDiffusion" (train_mamba.py): MambaIR with linear-time selective scans instead of
quadratic attention, so large photos cost linearly in their pixels. ``--arch mambair_unet`` (default)
is the official real-photo denoising U-Net (realDenoising/options/train_MambaIR_RealDN.yml: dim 48,
blocks 4/6/6/8, 4 refinement, mlp_ratio 1.5; 26.8M parameters); ``--arch mambair`` the full-resolution
RSSG network of the colour-denoising configs (embed_dim 180, 6 x 6 blocks, mlp_ratio 1.2; 15.8M).
Official weights load with --pretrained (``params`` / ``params_ema`` files, strict). The scan runs
mamba_ssm's CUDA kernel when installed (``pip install mamba-ssm`` on a machine with the CUDA toolkit),
else the library's pure-PyTorch scan (models/scan.py). The optimizer follows the official RealDN
recipe (AdamW 3e-4, weight decay 1e-4); the catalog gives no loss weights, so the defaults put
Charbonnier first and each other term at a fraction of its size. The catalog's optional diffusion
stage is not part of this script.

Usage:
    python train_mamba.py --data /path/to/pairs --lpips-weights alexnet-owt-7be5be79.pth
    python train_mamba.py --arch mambair --data DATA --pretrained ColorDN_MambaIR_level15.pth
    python train_mamba.py --lpips-weights random          # built-in demo data, code check
    python train_mamba.py --data DATA --resume runs/train_mamba
CPU smoke test (seconds):
    python train_mamba.py --steps 4 --crop 32 --batch-size 1 --dim 30 --num-blocks 1 1 1 1 \
        --num-refinement-blocks 1 --mlp-ratio 1 --val-every 2 --lpips-weights random --out /tmp/smoke
"""
from data.build import build_datasets
from data.loaders import train_batches, val_loader
from losses import CharbonnierLoss, CombinedLoss
from losses.histogram import HISTOGRAM_BINS, HistogramLoss
from losses.lab import DeltaELoss
from losses.lpips import LPIPSLoss, add_lpips_args
from losses.structural import SSIMLoss
from models.mambair import MambaIR, MambaIRUNet
from utils.checkpoint import model_spec
from utils.cli import base_parser, parse_args, run_cli
from utils.run import Run, prepare_model, setup
from utils.training import TrainingState, autocast, make_train_step

ARCHITECTURES = {"mambair_unet": MambaIRUNet, "mambair": MambaIR}
# Each architecture's catalog mlp_ratio (SS2D's channel expansion).
MLP_RATIOS = {"mambair_unet": 1.5, "mambair": 1.2}
# No --data and no GPU: a small U-Net on small crops, so the demo finishes in ~10 min on 2 cores
# (width 30 is the smallest whose channel attention, C // 30, is not empty).
DEMO_BUDGET = dict(steps=150, crop=48, batch_size=2, dim=30, num_blocks=[1, 1, 1, 1], num_refinement_blocks=1,
                   mlp_ratio=1.0, embed_dim=30, depths=[1, 1], lr=1e-3, warmup=10, grad_clip=0.0,
                   val_every=50, save_every=50, log_every=10, workers=2, ema=0.99)


def model_kwargs(args) -> dict:
    """The chosen architecture's official constructor arguments from the flags."""
    mlp_ratio = args.mlp_ratio if args.mlp_ratio is not None else MLP_RATIOS[args.arch]
    if args.arch == "mambair":
        return dict(upscale=1, in_chans=3, embed_dim=args.embed_dim, depths=list(args.depths),
                    mlp_ratio=mlp_ratio, d_state=args.d_state, upsampler="", resi_connection="1conv")
    return dict(inp_channels=3, out_channels=3, dim=args.dim, num_blocks=list(args.num_blocks),
                num_refinement_blocks=args.num_refinement_blocks, mlp_ratio=mlp_ratio, bias=False)


def main(argv=None):
    # --- config -----------------------------------------------------------------------------
    # RealDN trains on progressive 128-384 crops with AdamW 3e-4 / 1e-4; we take 256 as the fixed crop.
    parser = base_parser(__doc__, crop=256, lr=3e-4, weight_decay=1e-4)
    group = parser.add_argument_group("model (MambaIR)")
    group.add_argument("--arch", choices=sorted(ARCHITECTURES), default="mambair_unet")
    group.add_argument("--mlp-ratio", type=float, default=None,
                       help="SS2D channel expansion (default: 1.5 for mambair_unet, 1.2 for mambair)")
    group.add_argument("--dim", type=int, default=48, help="mambair_unet: channels at full resolution")
    group.add_argument("--num-blocks", type=int, nargs=4, default=[4, 6, 6, 8], help="mambair_unet: blocks per level")
    group.add_argument("--num-refinement-blocks", type=int, default=4, help="mambair_unet")
    group.add_argument("--embed-dim", type=int, default=180, help="mambair: feature channels")
    group.add_argument("--depths", type=int, nargs="+", default=[6] * 6, help="mambair: blocks per residual group")
    group.add_argument("--d-state", type=int, default=16, help="mambair: state size (the U-Net's is 16)")
    add_lpips_args(parser)
    parser.add_argument("--charbonnier-weight", type=float, default=1.0)
    parser.add_argument("--ssim-weight", type=float, default=0.2, help="1 - SSIM")
    parser.add_argument("--lpips-weight", type=float, default=0.1, help="LPIPS (AlexNet)")
    parser.add_argument("--lab-weight", type=float, default=0.5, help="mean Delta E 76 / 100")
    parser.add_argument("--histogram-weight", type=float, default=0.2, help="per-channel histogram EMD")
    parser.add_argument("--histogram-bins", type=int, default=HISTOGRAM_BINS)
    args = parse_args(parser, argv, DEMO_BUDGET, script="train_mamba")

    # --- setup --------------------------------------------------------------------------------
    device, run_dir = setup(args)

    # --- data ---------------------------------------------------------------------------------
    train_set, val_set = build_datasets(args)

    # --- model --------------------------------------------------------------------------------
    kwargs = model_kwargs(args)
    network = ARCHITECTURES[args.arch](**kwargs, grad_checkpoint=args.grad_checkpoint)
    train_model = prepare_model(network, args, device, type(network).__name__)

    # --- loss ---------------------------------------------------------------------------------
    criterion = CombinedLoss({
        "charbonnier": (args.charbonnier_weight, CharbonnierLoss()),
        "ssim": (args.ssim_weight, SSIMLoss()),
        # AlexNet is only loaded when used (a weight-0 term is never built or computed).
        "lpips": (args.lpips_weight, LPIPSLoss(weights=args.lpips_weights) if args.lpips_weight else None),
        "lab": (args.lab_weight, DeltaELoss()),
        "histogram": (args.histogram_weight, HistogramLoss(args.histogram_bins)),
    }).to(device)

    # --- optimizer: AdamW + cosine warm-up, EMA, fp16 loss scaling, clipping, non-finite guard ----
    train_step = make_train_step(network, args, device)
    state = TrainingState(model=network, train_step=train_step,
                          config={**vars(args), "model": model_spec(network, kwargs)})

    # --- resume -------------------------------------------------------------------------------
    run = Run(args, state, device)
    batches = train_batches(train_set, args.batch_size, args.seed, start_step=run.step,
                            workers=args.workers, pin_memory=device.type == "cuda")

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
