"""Restormer on whole 3296x2192 photos across GPUs: torchrun + DistributedDataParallel.

CATALOG.md "train_restormer_ddp.py": the original trained Restormer on 2x H200 at full resolution, no
tiling. Each process holds the whole model and trains on its share of every batch (NCCL on GPU, gloo
on CPU); activation checkpointing per transformer block (on by default: a whole photo's activations
are what fills the GPU), bf16 autocast on CUDA, the baseline's combined loss (L1 + window-aware L1 +
HSV saturation, as train_restormer_512_combined_loss.py). --batch-size is per process: N processes
with --batch-size B train on exactly the batches of one process with --batch-size N*B, so a run
resumes on another number of GPUs when N*B is kept. Rank 0 writes the run folder; checkpoints are
ordinary last.pt / best.pt files (enhance.py, evaluate.py, report.py read them as any run's).

Usage:
    torchrun --standalone --nproc_per_node 2 train_restormer_ddp.py --data /path/to/pairs   # whole photos
    torchrun --standalone --nproc_per_node 8 train_restormer_ddp.py --data DATA --crop 512 --batch-size 2
    torchrun --standalone --nproc_per_node 2 train_restormer_ddp.py --data DATA --resume runs/train_restormer_ddp
    python train_restormer_ddp.py                      # one process, built-in demo data
--crop 0 trains on whole photos: they must share one size, or use --batch-size 1.
CPU smoke test (seconds):
    python train_restormer_ddp.py --steps 4 --crop 32 --batch-size 2 --dim 8 --num-blocks 1 1 1 1 \
        --num-refinement-blocks 1 --heads 1 1 1 1 --val-every 2 --out /tmp/smoke
"""
from data.build import build_datasets
from data.loaders import val_loader
from losses import CombinedLoss, L1Loss, SaturationLoss, WindowAwareLoss
from losses.window import WINDOW_SOFTNESS, WINDOW_THRESHOLD
from models.restormer import Restormer
from utils.checkpoint import model_spec
from utils.cli import add_restormer_args, base_parser, parse_args, restormer_kwargs
from utils.distributed import DistributedRun, run_distributed_cli, setup_distributed, wrap_ddp
from utils.run import prepare_model
from utils.training import TrainingState, autocast, make_train_step

# The original: whole photos, one per GPU.
RECIPE = dict(crop=0, batch_size=1, grad_checkpoint=True)
# No --data and no GPU: a small Restormer on small crops, so the demo finishes in minutes on 2 cores.
DEMO_BUDGET = dict(steps=300, crop=96, batch_size=2, dim=16, num_blocks=[1, 2, 2, 2],
                   num_refinement_blocks=1, heads=[1, 2, 4, 8], lr=1e-3, warmup=20, grad_clip=0.0,
                   val_every=100, save_every=100, log_every=10, workers=2, ema=0.99, grad_checkpoint=False)


def main(argv=None):
    # --- config -----------------------------------------------------------------------------
    parser = base_parser(__doc__, **RECIPE)
    add_restormer_args(parser)
    parser.add_argument("--no-grad-checkpoint", dest="grad_checkpoint", action="store_false",
                        help="keep every activation (faster, for crops that fit without checkpointing)")
    parser.add_argument("--l1-weight", type=float, default=1.0)
    parser.add_argument("--window-weight", type=float, default=0.5)
    parser.add_argument("--saturation-weight", type=float, default=0.3)
    parser.add_argument("--window-threshold", type=float, default=WINDOW_THRESHOLD)
    parser.add_argument("--window-softness", type=float, default=WINDOW_SOFTNESS)
    args = parse_args(parser, argv, DEMO_BUDGET, script="train_restormer_ddp")
    args.crop = args.crop or None  # 0: whole photos

    # --- setup: this process's rank and device (torchrun's environment), seed, run folder -------
    context = setup_distributed(args)
    device = context.device

    # --- data ---------------------------------------------------------------------------------
    train_set, val_set = build_datasets(args)

    # --- model: the plain Restormer is checkpointed and validated, the DDP wrapper trains ------
    model_kwargs = restormer_kwargs(args)
    model = Restormer(**model_kwargs, grad_checkpoint=args.grad_checkpoint)
    train_model = wrap_ddp(prepare_model(model, args, device, "Restormer"), context)

    # --- loss ---------------------------------------------------------------------------------
    criterion = CombinedLoss({
        "l1": (args.l1_weight, L1Loss()),
        "window": (args.window_weight, WindowAwareLoss(args.window_threshold, args.window_softness)),
        "saturation": (args.saturation_weight, SaturationLoss()),
    })

    # --- optimizer: AdamW + cosine warm-up, EMA, clipping (on the all-reduced gradients) --------
    train_step = make_train_step(train_model, args, device)
    state = TrainingState(model=model, train_step=train_step,
                          config={**vars(args), "model": model_spec(model, model_kwargs)})

    # --- resume: every rank reads the checkpoint, each takes its share of the batches ----------
    run = DistributedRun(args, state, context)
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
            # --- validation / checkpoint: rank 0, at their intervals ---------------------------
            run.end_step(losses)
    return run


if __name__ == "__main__":
    run_distributed_cli(main)
