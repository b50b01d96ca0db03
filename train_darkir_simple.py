"""DarkIR + L1: the minimal, stable DarkIR baseline.

CATALOG.md "Simple DarkIR": DarkIR (FFT-based encoder blocks, dilated decoder blocks; models/darkir.py)
trained with L1 alone -- the reference the other DarkIR recipes (window-aware loss, cross-validation,
FiveK transfer) are compared against. Optimizer defaults follow DarkIR's official training (AdamW,
lr 5e-4, weight decay 1e-3, no gradient clipping); --pretrained DarkIR_384.pt starts from the
published LOLBlur weights (DarkIR-m, the default --size).

Usage:
    python train_darkir_simple.py --data /path/to/pairs                    # the real recipe (DarkIR-m)
    python train_darkir_simple.py --data /path/to/pairs --pretrained DarkIR_384.pt
    python train_darkir_simple.py                                          # built-in demo data
    python train_darkir_simple.py --data DATA --resume runs/train_darkir_simple
CPU smoke test (seconds):
    python train_darkir_simple.py --steps 4 --crop 32 --batch-size 2 --width 8 --enc-blocks 1 1 1 \
        --dec-blocks 1 1 1 --middle-blocks-enc 1 --middle-blocks-dec 1 --val-every 2 --out /tmp/smoke
"""
from data.build import build_datasets
from data.loaders import val_loader
from losses import CombinedLoss, L1Loss
from models.darkir import DarkIR
from utils.checkpoint import model_spec
from utils.cli import add_darkir_args, base_parser, darkir_kwargs, parse_args, run_cli
from utils.run import Run, prepare_model, setup
from utils.training import TrainingState, autocast, make_train_step

# DarkIR's official optimizer settings (cidautai/DarkIR options/train/*.yml).
RECIPE = dict(lr=5e-4, weight_decay=1e-3, grad_clip=0.0)
# No --data and no GPU: a width-16 DarkIR on small crops, so the demo finishes in minutes on 2 cores.
DEMO_BUDGET = dict(steps=400, crop=96, batch_size=4, width=16, lr=1e-3, warmup=20, val_every=100,
                   save_every=100, log_every=10, workers=2, ema=0.99)


def main(argv=None):
    # --- config -----------------------------------------------------------------------------
    parser = base_parser(__doc__, **RECIPE)
    add_darkir_args(parser)
    args = parse_args(parser, argv, DEMO_BUDGET, script="train_darkir_simple")

    # --- setup --------------------------------------------------------------------------------
    device, run_dir = setup(args)

    # --- data ---------------------------------------------------------------------------------
    train_set, val_set = build_datasets(args)

    # --- model --------------------------------------------------------------------------------
    model_kwargs = darkir_kwargs(args)
    model = DarkIR(**model_kwargs)
    train_model = prepare_model(model, args, device, "DarkIR")

    # --- loss ---------------------------------------------------------------------------------
    criterion = CombinedLoss({"l1": (1.0, L1Loss())})

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
            losses = criterion(pred.float(), target, inp)
            train_step(losses["loss"])
            # --- validation / checkpoint: logged, validated and saved at their intervals ----------
            run.end_step(losses)
    return run


if __name__ == "__main__":
    run_cli(main)
