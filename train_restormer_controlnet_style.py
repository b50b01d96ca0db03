"""Restormer with ControlNet's zero convolutions: a locked pretrained Restormer plus a trainable encoder copy.

CATALOG.md "Restormer with Zero-Conv": a locked Restormer and a trainable copy of its encoder joined through
zero-initialised 1x1 convolutions (models/zero_conv.py). Training starts exactly at the pretrained output
and can only add a learned correction to it, so a small dataset (the catalog's 464 pairs) adapts the model
without catastrophic forgetting. Loss: L1 (the catalog's "standard").

--pretrained names the Restormer to lock and to copy: an official file ({'params': ...}, e.g. GoPro
motion_deblurring.pth; SIDD real_denoising.pth with --layernorm BiasFree) or a Restormer run of this
codebase. Without it the locked model is random, which only makes sense for a smoke test.

Usage:
    python train_restormer_controlnet_style.py --data /path/to/pairs --pretrained motion_deblurring.pth
    python train_restormer_controlnet_style.py --data DATA --pretrained runs/train_restormer_512_combined_loss
CPU smoke test (seconds):
    python train_restormer_controlnet_style.py --steps 4 --crop 32 --batch-size 2 --dim 8 \
        --num-blocks 1 1 1 1 --num-refinement-blocks 1 --heads 1 1 1 1 --val-every 2 --out /tmp/smoke
"""
import torch

from data.build import build_datasets
from data.loaders import val_loader
from losses import CombinedLoss, L1Loss
from models.zero_conv import ZeroConvRestormer
from utils.checkpoint import load_pretrained_restormer, model_spec
from utils.cli import add_restormer_args, base_parser, parse_args, restormer_kwargs, run_cli
from utils.run import Run, setup
from utils.training import TrainingState, autocast, make_train_step

# No --data and no GPU: a small model on small crops, so the demo finishes in minutes on 2 cores.
DEMO_BUDGET = dict(steps=300, crop=96, batch_size=4, dim=16, num_blocks=[1, 2, 2, 2],
                   num_refinement_blocks=1, heads=[1, 2, 4, 8], lr=1e-3, warmup=20, grad_clip=0.0,
                   val_every=100, save_every=100, log_every=10, workers=2, ema=0.99)


def main(argv=None):
    # --- config -----------------------------------------------------------------------------
    # Fine-tuning defaults: a lower peak lr than training from scratch, a short warm-up.
    parser = base_parser(__doc__, lr=1e-4, steps=10_000, warmup=200)
    add_restormer_args(parser)
    parser.add_argument("--l1-weight", type=float, default=1.0)
    args = parse_args(parser, argv, DEMO_BUDGET, script="train_restormer_controlnet_style")

    # --- setup --------------------------------------------------------------------------------
    device, run_dir = setup(args)

    # --- data ---------------------------------------------------------------------------------
    train_set, val_set = build_datasets(args)

    # --- model: locked Restormer + trainable encoder copy through zero convolutions -----------
    model_kwargs = restormer_kwargs(args)
    model = ZeroConvRestormer(**model_kwargs, grad_checkpoint=args.grad_checkpoint)
    if args.pretrained:
        load_pretrained_restormer(model, args.pretrained)
    else:
        print("warning: no --pretrained: the locked Restormer is randomly initialised (smoke tests only)")
    model.to(device)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    print(f"model: ZeroConvRestormer, {trainable:,} trainable of {sum(p.numel() for p in model.parameters()):,} "
          "parameters")
    train_model = torch.compile(model) if args.compile else model

    # --- loss ---------------------------------------------------------------------------------
    criterion = CombinedLoss({"l1": (args.l1_weight, L1Loss())})

    # --- optimizer (the trainable copy and the zero convolutions only) ------------------------
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
            losses = criterion(pred.float(), target, inp)
            train_step(losses["loss"])
            # --- validation / checkpoint: logged, validated and saved at their intervals ----------
            run.end_step(losses)
    return run


if __name__ == "__main__":
    run_cli(main)
