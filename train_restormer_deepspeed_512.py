"""Restormer at 512 px under DeepSpeed ZeRO: optimizer state (1), gradients (2) and weights (3) partitioned.

CATALOG.md Category 8: the original also trained Restormer under DeepSpeed at 512. N processes
(torchrun) each hold 1/N of the AdamW moments and fp32 master weights (--zero-stage 1), also of the
gradients (2, the default) or also of the weights (3: gathered per module for its forward and
backward); --offload-optimizer keeps the optimizer state and its step on the CPU. bf16 weights for the
forward on CUDA, fp32 master weights; the baseline's combined loss (L1 + window-aware L1 + HSV
saturation). The DeepSpeed config is built from the shared flags (--batch-size per process,
--grad-accum, --lr, --weight-decay, --grad-clip, --amp) and a --deepspeed-config FILE merged over it
wins; the resolved one is saved as RUN/deepspeed_config.json. Checkpoints: RUN/deepspeed/step_*/
(DeepSpeed's, every rank its partition) and last.pt (the fp32 weights, zero_to_fp32, pointing at
them); resumed on another number of processes through DeepSpeed's universal checkpoint, converted
on the fly. best.pt: the validated fp32 weights. enhance.py, evaluate.py, report.py read the run
folder. No EMA (partitioned weights).

Usage:
    torchrun --standalone --nproc_per_node 2 train_restormer_deepspeed_512.py --data /path/to/pairs
    torchrun --standalone --nproc_per_node 8 train_restormer_deepspeed_512.py --data DATA --batch-size 2 \
        --zero-stage 3 --offload-optimizer
    torchrun --standalone --nproc_per_node 4 train_restormer_deepspeed_512.py --data DATA --batch-size 4 \
        --resume runs/train_restormer_deepspeed_512     # saved by 8 x 2: converted to a universal checkpoint
    torchrun --standalone --nproc_per_node 2 train_restormer_deepspeed_512.py --data DATA --deepspeed-config ds.json
    python train_restormer_deepspeed_512.py            # one process, built-in demo data
CPU smoke test (seconds, after DeepSpeed's first-run build of its CPU communication kernel):
    python train_restormer_deepspeed_512.py --steps 4 --crop 32 --batch-size 2 --dim 8 --num-blocks 1 1 1 1 \
        --num-refinement-blocks 1 --heads 1 1 1 1 --val-every 2 --out /tmp/smoke
"""
from data.build import build_datasets
from data.loaders import val_loader
from losses import CombinedLoss, L1Loss, SaturationLoss, WindowAwareLoss
from losses.window import WINDOW_SOFTNESS, WINDOW_THRESHOLD
from models.restormer import Restormer
from utils.checkpoint import build_model, model_spec
from utils.cli import add_restormer_args, base_parser, parse_args, restormer_kwargs
from utils.deepspeed_engine import DeepSpeedTrainingState, add_deepspeed_args, init_deepspeed
from utils.distributed import DistributedRun, run_distributed_cli, setup_distributed
from utils.run import prepare_model
from utils.training import autocast

# No --data and no GPU: a small Restormer on small crops, so the demo finishes in minutes on 2 cores.
DEMO_BUDGET = dict(steps=300, crop=96, batch_size=2, dim=16, num_blocks=[1, 2, 2, 2],
                   num_refinement_blocks=1, heads=[1, 2, 4, 8], lr=1e-3, warmup=20, grad_clip=0.0,
                   val_every=100, save_every=100, log_every=10, workers=2)


def main(argv=None):
    # --- config -----------------------------------------------------------------------------
    parser = base_parser(__doc__, crop=512, ema=0.0)
    add_restormer_args(parser)
    add_deepspeed_args(parser)
    parser.add_argument("--l1-weight", type=float, default=1.0)
    parser.add_argument("--window-weight", type=float, default=0.5)
    parser.add_argument("--saturation-weight", type=float, default=0.3)
    parser.add_argument("--window-threshold", type=float, default=WINDOW_THRESHOLD)
    parser.add_argument("--window-softness", type=float, default=WINDOW_SOFTNESS)
    args = parse_args(parser, argv, DEMO_BUDGET, script="train_restormer_deepspeed_512")

    # --- setup: this process's rank and device (torchrun's, else a group of one), seed, run folder
    context = setup_distributed(args, require_group=True)
    device = context.device

    # --- model: DeepSpeed's engine around it (config from the flags, --deepspeed-config over it);
    # rank 0 keeps a plain copy to validate and ship -----------------------------------------------
    model_kwargs = restormer_kwargs(args)
    model = Restormer(**model_kwargs, grad_checkpoint=args.grad_checkpoint)
    spec = model_spec(model, model_kwargs)
    engine = init_deepspeed(prepare_model(model, args, device, "Restormer"), args, context)
    plain_model = build_model(spec).to(device) if context.is_main else None

    # --- data (after the engine: a --deepspeed-config may set the batch size) ------------------
    train_set, val_set = build_datasets(args)

    # --- loss ---------------------------------------------------------------------------------
    criterion = CombinedLoss({
        "l1": (args.l1_weight, L1Loss()),
        "window": (args.window_weight, WindowAwareLoss(args.window_threshold, args.window_softness)),
        "saturation": (args.saturation_weight, SaturationLoss()),
    })

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
