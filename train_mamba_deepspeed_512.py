"""MambaIR-UNet at 512 px under DeepSpeed ZeRO: optimizer state (1), gradients (2) and weights (3) partitioned.

CATALOG.md Category 8: the state-space line under DeepSpeed (the Restormer one is
train_restormer_deepspeed_512.py, the same plumbing: utils/deepspeed_engine.py). MambaIR's real-photo
denoising U-Net (models/mambair.py MambaIRUNet: dim 48, blocks 4/6/6/8, 4 refinement, mlp_ratio 1.5,
as the official RealDN config) with its optimizer (AdamW 3e-4, weight decay 1e-4); the loss of
train_mamba.py without its LPIPS term (Charbonnier + SSIM + Delta E + histogram: every term a
per-image mean). --zero-stage 1/2/3, --offload-optimizer, the DeepSpeed config built from the shared
flags (--batch-size per process) with --deepspeed-config FILE over it (resolved into
RUN/deepspeed_config.json). Checkpoints: RUN/deepspeed/step_*/ + last.pt (fp32 weights via
zero_to_fp32), resumed on another number of processes through DeepSpeed's universal checkpoint;
best.pt the validated fp32 weights. No EMA (partitioned weights).

Usage:
    torchrun --standalone --nproc_per_node 2 train_mamba_deepspeed_512.py --data /path/to/pairs
    torchrun --standalone --nproc_per_node 8 train_mamba_deepspeed_512.py --data DATA --batch-size 2 --zero-stage 3
    torchrun --standalone --nproc_per_node 4 train_mamba_deepspeed_512.py --data DATA \
        --resume runs/train_mamba_deepspeed_512          # saved by 8: converted to a universal checkpoint
    python train_mamba_deepspeed_512.py                 # one process, built-in demo data
CPU smoke test (seconds, after DeepSpeed's first-run build of its CPU communication kernel):
    python train_mamba_deepspeed_512.py --steps 4 --crop 16 --val-crop 16 --batch-size 1 --dim 30 \
        --num-blocks 1 1 1 1 --num-refinement-blocks 1 --mlp-ratio 1 --val-every 2 --out /tmp/smoke
"""
from data.build import build_datasets
from data.loaders import val_loader
from losses import CharbonnierLoss, CombinedLoss
from losses.histogram import HistogramLoss
from losses.lab import DeltaELoss
from losses.structural import SSIMLoss
from models.mambair import MambaIRUNet
from utils.checkpoint import build_model, model_spec
from utils.cli import add_mambair_unet_args, base_parser, mambair_unet_kwargs, parse_args
from utils.deepspeed_engine import DeepSpeedTrainingState, add_deepspeed_args, init_deepspeed
from utils.distributed import DistributedRun, run_distributed_cli, setup_distributed
from utils.run import prepare_model
from utils.training import autocast

# No --data and no GPU: a small U-Net on small crops (width 30: the smallest whose channel attention,
# C // 30, is not empty), so the demo finishes in minutes on 2 cores.
DEMO_BUDGET = dict(steps=150, crop=48, batch_size=2, dim=30, num_blocks=[1, 1, 1, 1], num_refinement_blocks=1,
                   mlp_ratio=1.0, lr=1e-3, warmup=10, grad_clip=0.0, val_every=50, save_every=50,
                   log_every=10, workers=2)


def main(argv=None):
    # --- config: the official RealDN optimizer (AdamW 3e-4, weight decay 1e-4) -------------------
    parser = base_parser(__doc__, crop=512, lr=3e-4, weight_decay=1e-4, ema=0.0)
    add_mambair_unet_args(parser)
    add_deepspeed_args(parser)
    parser.add_argument("--charbonnier-weight", type=float, default=1.0)
    parser.add_argument("--ssim-weight", type=float, default=0.2, help="1 - SSIM")
    parser.add_argument("--lab-weight", type=float, default=0.5, help="mean Delta E 76 / 100")
    parser.add_argument("--histogram-weight", type=float, default=0.2, help="per-channel histogram EMD")
    args = parse_args(parser, argv, DEMO_BUDGET, script="train_mamba_deepspeed_512")

    # --- setup: this process's rank and device (torchrun's, else a group of one), seed, run folder
    context = setup_distributed(args, require_group=True)
    device = context.device

    # --- model: DeepSpeed's engine around it (config from the flags, --deepspeed-config over it);
    # rank 0 keeps a plain copy to validate and ship -----------------------------------------------
    model_kwargs = mambair_unet_kwargs(args)
    model = MambaIRUNet(**model_kwargs, grad_checkpoint=args.grad_checkpoint)
    spec = model_spec(model, model_kwargs)
    engine = init_deepspeed(prepare_model(model, args, device, "MambaIRUNet"), args, context)
    plain_model = build_model(spec).to(device) if context.is_main else None

    # --- data (after the engine: a --deepspeed-config may set the batch size) ------------------
    train_set, val_set = build_datasets(args)

    # --- loss ---------------------------------------------------------------------------------
    criterion = CombinedLoss({
        "charbonnier": (args.charbonnier_weight, CharbonnierLoss()),
        "ssim": (args.ssim_weight, SSIMLoss()),
        "lab": (args.lab_weight, DeltaELoss()),
        "histogram": (args.histogram_weight, HistogramLoss()),
    }).to(device)

    # --- optimizer: inside the engine (AdamW over the partitions, warm-up + cosine, clipping) ----
    state = DeepSpeedTrainingState(engine, config={**vars(args), "model": spec}, plain_model=plain_model,
                                   context=context)

    # --- resume: every rank loads its partition (universal when the world size changed) ---------
    run = DistributedRun(args, state, context)
    batches = run.train_batches(train_set)

    # --- loop ---------------------------------------------------------------------------------
    with run.training(val_loader(val_set, workers=min(args.workers, 2))):
        while run.step < args.steps:
            batch = next(batches)
            inp = batch["input"].to(device, non_blocking=True)
            target = batch["target"].to(device, non_blocking=True)
            with autocast(device, args.amp):
                pred = engine(inp)
            losses = criterion(pred.float(), target, inp)
            engine.backward(losses["loss"])
            engine.step()  # the optimizer steps on every --grad-accum-th micro-batch
            # --- validation (rank 0, gathered weights) / DeepSpeed checkpoint (every rank) --------
            run.end_step(losses)
    return run


if __name__ == "__main__":
    run_distributed_cli(main)
