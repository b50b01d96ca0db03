"""Restormer Base + plain L1, on inputs run through a configurable preprocessing pipeline.

CATALOG.md "Base Restormer with Preprocessing": the experiment is the data, not the loss. Every input
photo goes through --preprocess (white balance, denoising, a resize policy; data/preprocess.py lists
the steps) in the DataLoader workers, on the whole image before cropping; the parsed pipeline is saved
in config['preprocess'], and enhance.py applies exactly the same steps to a photo before the model.
Photometric steps change the input only; a resize applies to input and target alike.

Usage:
    python train_restormer_cleaned.py --data /path/to/pairs             # the real recipe
    python train_restormer_cleaned.py --data /path/to/pairs --preprocess "grayworld,resize:max_side=2048"
    python train_restormer_cleaned.py --data DATA --resume runs/train_restormer_cleaned
CPU smoke test (seconds):
    python train_restormer_cleaned.py --steps 4 --crop 32 --batch-size 2 --dim 8 \
        --num-blocks 1 1 1 1 --num-refinement-blocks 1 --heads 1 1 1 1 --val-every 2 --out /tmp/smoke
"""

from data.build import build_datasets
from data.loaders import val_loader
from data.preprocess import parse_pipeline, preprocessed
from losses import CombinedLoss, L1Loss
from models.restormer import Restormer
from utils.checkpoint import model_spec
from utils.cli import add_restormer_args, base_parser, parse_args, restormer_kwargs, run_cli
from utils.run import Run, prepare_model, setup
from utils.training import TrainingState, autocast, make_train_step

# No --data and no GPU: a small Restormer on small crops, so the demo finishes in ~10 min on 2 cores.
DEMO_BUDGET = dict(steps=400, crop=96, batch_size=4, dim=16, num_blocks=[1, 2, 2, 2],
                   num_refinement_blocks=1, heads=[1, 2, 4, 8], lr=1e-3, warmup=20, grad_clip=0.0,
                   val_every=100, save_every=100, log_every=10, workers=2, ema=0.99)


def main(argv=None):
    # --- config -----------------------------------------------------------------------------
    parser = base_parser(__doc__)
    add_restormer_args(parser)
    parser.add_argument("--preprocess", default="grayworld,denoise",
                        help="input preprocessing steps, e.g. 'grayworld,denoise:method=nlmeans:strength=3,"
                             "resize:max_side=2048' ('none': off; steps: grayworld, denoise, resize). denoise's "
                             "default method is bilateral; nlmeans is stronger but ~15 s per 7 MP photo")
    args = parse_args(parser, argv, DEMO_BUDGET, script="train_restormer_cleaned")
    steps = parse_pipeline(args.preprocess)  # a bad spec stops here, before anything is written

    # --- setup --------------------------------------------------------------------------------
    device, run_dir = setup(args)

    # --- data ---------------------------------------------------------------------------------
    train_set, val_set = (preprocessed(dataset, steps) for dataset in build_datasets(args))
    print("preprocess: " + (", ".join(step["name"] for step in steps) or "none"))

    # --- model --------------------------------------------------------------------------------
    model_kwargs = restormer_kwargs(args)
    model = Restormer(**model_kwargs, grad_checkpoint=args.grad_checkpoint)
    train_model = prepare_model(model, args, device, "Restormer")

    # --- loss ---------------------------------------------------------------------------------
    criterion = CombinedLoss({"l1": (1.0, L1Loss())})

    # --- optimizer: AdamW + cosine warm-up, EMA, fp16 loss scaling, clipping, non-finite guard ----
    train_step = make_train_step(model, args, device)
    config = {**vars(args), "model": model_spec(model, model_kwargs), "preprocess": steps}
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
