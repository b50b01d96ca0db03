"""MambaIR-UNet at 512 px with its weights, gradients and optimizer state sharded: torchrun + FSDP2.

CATALOG.md Category 8: the state-space line under FSDP (the Restormer one is
train_restormer_fsdp_512.py, the same plumbing). MambaIR's real-photo denoising U-Net
(models/mambair.py MambaIRUNet: dim 48, blocks 4/6/6/8, 4 refinement, mlp_ratio 1.5, as the official
RealDN config), each VSS block one FSDP2 unit over the device mesh; bf16 parameters and activations
on CUDA, gradients reduced in fp32; the loss of train_mamba.py without its LPIPS term (Charbonnier +
SSIM + Delta E + histogram: every term a per-image mean). --batch-size is per process. Checkpoints:
last.pt + sharded/step_*/ (torch.distributed.checkpoint: resumes on any number of processes) and
best.pt with the full validated weights. No EMA (sharded weights).

Usage:
    torchrun --standalone --nproc_per_node 2 train_mamba_fsdp_512.py --data /path/to/pairs
    torchrun --standalone --nproc_per_node 8 train_mamba_fsdp_512.py --data DATA --batch-size 2 --grad-checkpoint
    torchrun --standalone --nproc_per_node 2 train_mamba_fsdp_512.py --data DATA --resume runs/train_mamba_fsdp_512
    python train_mamba_fsdp_512.py                      # one process, built-in demo data
CPU smoke test (seconds):
    python train_mamba_fsdp_512.py --steps 4 --crop 32 --batch-size 1 --dim 30 --num-blocks 1 1 1 1 \
        --num-refinement-blocks 1 --mlp-ratio 1 --val-every 2 --out /tmp/smoke
"""
from data.build import build_datasets
from data.loaders import val_loader
from losses import CharbonnierLoss, CombinedLoss
from losses.histogram import HistogramLoss
from losses.lab import DeltaELoss
from losses.structural import SSIMLoss
from models.mambair import MambaIRUNet, VSSBlock
from utils.checkpoint import build_model, model_spec
from utils.cli import add_mambair_unet_args, base_parser, mambair_unet_kwargs, parse_args
from utils.distributed import (DistributedRun, ShardedTrainingState, run_distributed_cli, setup_distributed,
                               wrap_fsdp)
from utils.run import prepare_model
from utils.training import autocast, make_train_step

# No --data and no GPU: a small U-Net on small crops (width 30: the smallest whose channel attention,
# C // 30, is not empty), so the demo finishes in minutes on 2 cores.
DEMO_BUDGET = dict(steps=150, crop=48, batch_size=2, dim=30, num_blocks=[1, 1, 1, 1], num_refinement_blocks=1,
                   mlp_ratio=1.0, lr=1e-3, warmup=10, grad_clip=0.0, val_every=50, save_every=50,
                   log_every=10, workers=2)


def main(argv=None):
    # --- config: the official RealDN optimizer (AdamW 3e-4, weight decay 1e-4) -------------------
    parser = base_parser(__doc__, crop=512, lr=3e-4, weight_decay=1e-4, ema=0.0)
    add_mambair_unet_args(parser)
    parser.add_argument("--charbonnier-weight", type=float, default=1.0)
    parser.add_argument("--ssim-weight", type=float, default=0.2, help="1 - SSIM")
    parser.add_argument("--lab-weight", type=float, default=0.5, help="mean Delta E 76 / 100")
    parser.add_argument("--histogram-weight", type=float, default=0.2, help="per-channel histogram EMD")
    args = parse_args(parser, argv, DEMO_BUDGET, script="train_mamba_fsdp_512")

    # --- setup: this process's rank and device (torchrun's environment), seed, run folder -------
    context = setup_distributed(args)
    device = context.device

    # --- data ---------------------------------------------------------------------------------
    train_set, val_set = build_datasets(args)

    # --- model: sharded per VSS block; rank 0 keeps a plain copy to validate and ship ------------
    model_kwargs = mambair_unet_kwargs(args)
    model = MambaIRUNet(**model_kwargs, grad_checkpoint=args.grad_checkpoint)
    spec = model_spec(model, model_kwargs)
    model = wrap_fsdp(prepare_model(model, args, device, "MambaIRUNet"), context, args.amp, VSSBlock)
    plain_model = build_model(spec).to(device) if context.is_main else None

    # --- loss ---------------------------------------------------------------------------------
    criterion = CombinedLoss({
        "charbonnier": (args.charbonnier_weight, CharbonnierLoss()),
        "ssim": (args.ssim_weight, SSIMLoss()),
        "lab": (args.lab_weight, DeltaELoss()),
        "histogram": (args.histogram_weight, HistogramLoss()),
    }).to(device)

    # --- optimizer: AdamW over the shards, cosine warm-up, clipping of the global norm ----------
    train_step = make_train_step(model, args, device)
    state = ShardedTrainingState(model=model, train_step=train_step, config={**vars(args), "model": spec},
                                 plain_model=plain_model, context=context)

    # --- resume: every rank loads its shards of last.pt, each takes its share of the batches ----
    run = DistributedRun(args, state, context)
    batches = run.train_batches(train_set)

    # --- loop ---------------------------------------------------------------------------------
    with run.training(val_loader(val_set, workers=min(args.workers, 2))):
        while run.step < args.steps:
            batch = next(batches)
            inp = batch["input"].to(device, non_blocking=True)
            target = batch["target"].to(device, non_blocking=True)
            with autocast(device, args.amp):
                pred = model(inp)
            losses = criterion(pred.float(), target, inp)
            train_step(losses["loss"])
            # --- validation (rank 0, gathered weights) / sharded checkpoint (every rank) ---------
            run.end_step(losses)
    return run


if __name__ == "__main__":
    run_distributed_cli(main)
