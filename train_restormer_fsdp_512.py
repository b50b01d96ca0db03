"""Restormer at 512 px with its weights, gradients and optimizer state sharded: torchrun + FSDP2.

CATALOG.md Category 8: the original also trained Restormer under FSDP at 512. Each of N processes
holds 1/N of the parameters, gradients and AdamW moments (``fully_shard`` per transformer block over a
device mesh, torch.distributed.fsdp); a block's weights are gathered just for its forward and
backward. bf16 parameters and activations on CUDA, gradients reduced in fp32, fp32 master weights;
the baseline's combined loss (L1 + window-aware L1 + HSV saturation). --batch-size is per process
(N x B trains as one process with N*B). Checkpoints: last.pt with its shards in sharded/step_*/
(torch.distributed.checkpoint, so a run saved by N processes resumes on any other number), best.pt
the full validated weights (enhance.py, evaluate.py, report.py read both). No EMA (sharded weights).

Usage:
    torchrun --standalone --nproc_per_node 2 train_restormer_fsdp_512.py --data /path/to/pairs
    torchrun --standalone --nproc_per_node 8 train_restormer_fsdp_512.py --data DATA --batch-size 2
    torchrun --standalone --nproc_per_node 4 train_restormer_fsdp_512.py --data DATA --batch-size 4 \
        --resume runs/train_restormer_fsdp_512          # saved by 8 x 2: the same 16 images a step
    python train_restormer_fsdp_512.py                  # one process, built-in demo data
CPU smoke test (seconds):
    python train_restormer_fsdp_512.py --steps 4 --crop 32 --batch-size 2 --dim 8 --num-blocks 1 1 1 1 \
        --num-refinement-blocks 1 --heads 1 1 1 1 --val-every 2 --out /tmp/smoke
"""
from data.build import build_datasets
from data.loaders import val_loader
from losses import CombinedLoss, L1Loss, SaturationLoss, WindowAwareLoss
from losses.window import WINDOW_SOFTNESS, WINDOW_THRESHOLD
from models.restormer import Restormer, TransformerBlock
from utils.checkpoint import build_model, model_spec
from utils.cli import add_restormer_args, base_parser, parse_args, restormer_kwargs
from utils.distributed import (DistributedRun, ShardedTrainingState, run_distributed_cli, setup_distributed,
                               wrap_fsdp)
from utils.run import prepare_model
from utils.training import autocast, make_train_step

# No --data and no GPU: a small Restormer on small crops, so the demo finishes in minutes on 2 cores.
DEMO_BUDGET = dict(steps=300, crop=96, batch_size=2, dim=16, num_blocks=[1, 2, 2, 2],
                   num_refinement_blocks=1, heads=[1, 2, 4, 8], lr=1e-3, warmup=20, grad_clip=0.0,
                   val_every=100, save_every=100, log_every=10, workers=2)


def main(argv=None):
    # --- config -----------------------------------------------------------------------------
    parser = base_parser(__doc__, crop=512, ema=0.0)
    add_restormer_args(parser)
    parser.add_argument("--l1-weight", type=float, default=1.0)
    parser.add_argument("--window-weight", type=float, default=0.5)
    parser.add_argument("--saturation-weight", type=float, default=0.3)
    parser.add_argument("--window-threshold", type=float, default=WINDOW_THRESHOLD)
    parser.add_argument("--window-softness", type=float, default=WINDOW_SOFTNESS)
    args = parse_args(parser, argv, DEMO_BUDGET, script="train_restormer_fsdp_512")

    # --- setup: this process's rank and device (torchrun's environment), seed, run folder -------
    context = setup_distributed(args)
    device = context.device

    # --- data ---------------------------------------------------------------------------------
    train_set, val_set = build_datasets(args)

    # --- model: sharded per transformer block; rank 0 keeps a plain copy to validate and ship -----
    model_kwargs = restormer_kwargs(args)
    model = Restormer(**model_kwargs, grad_checkpoint=args.grad_checkpoint)
    spec = model_spec(model, model_kwargs)
    model = wrap_fsdp(prepare_model(model, args, device, "Restormer"), context, args.amp, TransformerBlock)
    plain_model = build_model(spec).to(device) if context.is_main else None

    # --- loss ---------------------------------------------------------------------------------
    criterion = CombinedLoss({
        "l1": (args.l1_weight, L1Loss()),
        "window": (args.window_weight, WindowAwareLoss(args.window_threshold, args.window_softness)),
        "saturation": (args.saturation_weight, SaturationLoss()),
    })

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
