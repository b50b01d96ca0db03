"""RetinexFormer + the baseline's HDR losses (L1 + window-aware + saturation): Retinex-guided attention.

CATALOG.md Category 5 "RetinexFormer HDR": Retinexformer (Cai et al., ICCV 2023; models/retinexformer.py)
estimates a light-up map from the photo, lights it up and restores it with transformer blocks whose
attention is weighted by the illumination features -- dark interiors and bright windows are treated
differently by construction. Loss: the catalog's winning mix of train_restormer_512_combined_loss.py,
L1 (1.0) + window-aware L1 (0.5) + HSV saturation (0.3). Optimizer and schedule are the official
recipe (utils.cli.RETINEX_RECIPE: Adam 2e-4, two cosine cycles, 128 crops, batch 8; --mixup for the
official mixup). --pretrained takes the published RetinexFormer_{LOL_v1,FiveK,NTIRE}.pth (strict). The
validation grid shows input | output | target | the estimated light-up map (stretched to its range).

Usage:
    python train_retinexformer_hdr.py --data /path/to/pairs                  # the real recipe
    python train_retinexformer_hdr.py --data /path/to/pairs --pretrained FiveK.pth --mixup
    python train_retinexformer_hdr.py                                        # built-in demo data
    python train_retinexformer_hdr.py --data DATA --resume runs/train_retinexformer_hdr
CPU smoke test (seconds):
    python train_retinexformer_hdr.py --steps 4 --crop 32 --batch-size 2 --n-feat 8 --num-blocks 1 1 1 \
        --mixup --val-every 2 --out /tmp/smoke
"""
from data.build import build_datasets
from data.loaders import val_loader
from data.mixup import mixup_pairs
from losses import CombinedLoss, L1Loss, SaturationLoss, WindowAwareLoss
from losses.window import WINDOW_SOFTNESS, WINDOW_THRESHOLD
from models.retinexformer import RetinexFormer
from utils.checkpoint import model_spec
from utils.cli import RETINEX_RECIPE, add_retinex_args, base_parser, parse_args, retinex_kwargs, run_cli
from utils.run import Run, prepare_model, setup
from utils.training import TrainingState, autocast, cosine_restarts, make_train_step

# No --data and no GPU: a width-16 RetinexFormer on small crops, so the demo finishes in minutes on 2 cores.
DEMO_BUDGET = dict(steps=600, crop=96, batch_size=4, n_feat=16, num_blocks=[1, 1, 1], lr=1e-3, warmup=20,
                   cycle_min_lrs=[1e-3, 1e-5], val_every=150, save_every=150, log_every=10, workers=2, ema=0.99)


def main(argv=None):
    # --- config -----------------------------------------------------------------------------
    parser = base_parser(__doc__, **RETINEX_RECIPE)
    add_retinex_args(parser)
    parser.add_argument("--l1-weight", type=float, default=1.0)
    parser.add_argument("--window-weight", type=float, default=0.5)
    parser.add_argument("--saturation-weight", type=float, default=0.3)
    parser.add_argument("--window-threshold", type=float, default=WINDOW_THRESHOLD,
                        help="input luma above which a pixel counts as over-exposed (soft)")
    parser.add_argument("--window-softness", type=float, default=WINDOW_SOFTNESS)
    args = parse_args(parser, argv, DEMO_BUDGET, script="train_retinexformer_hdr")

    # --- setup --------------------------------------------------------------------------------
    device, run_dir = setup(args)

    # --- data ---------------------------------------------------------------------------------
    train_set, val_set = build_datasets(args)

    # --- model --------------------------------------------------------------------------------
    model_kwargs = retinex_kwargs(args)
    model = RetinexFormer(**model_kwargs, grad_checkpoint=args.grad_checkpoint)
    train_model = prepare_model(model, args, device, "RetinexFormer")

    # --- loss ---------------------------------------------------------------------------------
    criterion = CombinedLoss({
        "l1": (args.l1_weight, L1Loss()),
        "window": (args.window_weight, WindowAwareLoss(args.window_threshold, args.window_softness)),
        "saturation": (args.saturation_weight, SaturationLoss()),
    })

    # --- optimizer: Adam (AdamW, no decay) + cyclic cosine restarts, EMA, clipping, guard -------
    train_step = make_train_step(model, args, device, scheduler=lambda optimizer: cosine_restarts(
        optimizer, args.steps, args.cycles, args.cycle_min_lrs, warmup_steps=args.warmup))
    state = TrainingState(model=model, train_step=train_step,
                          config={**vars(args), "model": model_spec(model, model_kwargs)})

    # --- resume -------------------------------------------------------------------------------
    run = Run(args, state, device, sample_views=lambda net, inputs: [net.illumination(inputs)])
    batches = run.train_batches(train_set)

    # --- loop ---------------------------------------------------------------------------------
    with run.training(val_loader(val_set, workers=min(args.workers, 2))):
        while run.step < args.steps:
            batch = next(batches)
            inp = batch["input"].to(device, non_blocking=True)
            target = batch["target"].to(device, non_blocking=True)
            if args.mixup:
                inp, target = mixup_pairs(inp, target, args.mixup_beta)
            with autocast(device, args.amp):
                pred = train_model(inp)
            losses = criterion(pred.float(), target, inp)
            train_step(losses["loss"])
            # --- validation / checkpoint: logged, validated and saved at their intervals ----------
            run.end_step(losses)
    return run


if __name__ == "__main__":
    run_cli(main)
