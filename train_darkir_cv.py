"""DarkIR + L1 + VGG perceptual + SSIM with k-fold cross-validation; the fold models form an ensemble.

CATALOG.md "DarkIR with Cross-Validation": the training pairs are split into --folds (3) disjoint
folds (data/folds.py); fold k trains a DarkIR (DarkIR-m, or --size l) on the other folds and validates
on fold k, so every pair is validated on exactly once. Every fold starts from --pretrained when given
(the published LOLBlur weights DarkIR_384.pt). Loss: L1 + VGG19 perceptual (losses/perceptual.py) +
(1 - SSIM) (losses/structural.py); the catalog gives no weights, so the defaults are those of the
other perceptual recipes (0.1, 0.2). --side-weight adds DarkIR's optional auxiliary loss on its
1/8-scale side output (losses/side_output.py; off by default, as in the official configs).
Optimizer defaults follow DarkIR's official training (lr 5e-4, weight decay 1e-3, no clipping);
--steps counts the optimizer steps of each fold.

Run folder: OUT/fold_1 ... OUT/fold_k (each a complete run folder: config, metrics, samples, best.pt,
last.pt) and OUT/summary.json: per fold the validation PSNR/SSIM/L1 of its best.pt (the checkpoint the
ensemble uses), and their mean and sample standard deviation. --resume OUT continues the folds whose
last.pt has not reached --steps, in OUT, and starts those that never saved one. Pairs that the data layout sets
aside for validation (a val/ split, --val-data, or --val-fraction of a flat folder; --val-fraction 0
puts every pair into the folds) stay out of every fold: on them the ensemble and its single fold
models can be compared fairly. enhance.py and evaluate.py take OUT itself as the checkpoint: the
ensemble, the mean of the fold models' outputs.

Usage:
    python train_darkir_cv.py --data /path/to/pairs --vgg-weights vgg19-dcbb9e9d.pth --pretrained DarkIR_384.pt
    python train_darkir_cv.py --vgg-weights random                      # built-in demo data, code check
    python train_darkir_cv.py --data DATA --vgg-weights vgg19-dcbb9e9d.pth --resume runs/train_darkir_cv
CPU smoke test (seconds):
    python train_darkir_cv.py --folds 2 --steps 4 --crop 32 --batch-size 2 --width 8 --enc-blocks 1 1 1 \
        --dec-blocks 1 1 1 --middle-blocks-enc 1 --middle-blocks-dec 1 --side-weight 0.5 --val-every 2 \
        --vgg-weights random --out /tmp/smoke
"""
from data.folds import build_fold_datasets
from data.loaders import val_loader
from losses import CombinedLoss, L1Loss
from losses.perceptual import VGGPerceptualLoss, add_vgg_args
from losses.side_output import SideOutputLoss
from losses.structural import SSIMLoss
from models.darkir import DarkIR
from utils.checkpoint import model_spec
from utils.cli import add_darkir_args, base_parser, darkir_kwargs, parse_args, run_cli
from utils.folds import fold_resume_path, resume_folder, write_fold_summary
from utils.run import Run, prepare_model, setup
from utils.training import TrainingState, autocast, make_train_step, seed_everything

# DarkIR's official optimizer settings (cidautai/DarkIR options/train/*.yml).
RECIPE = dict(lr=5e-4, weight_decay=1e-3, grad_clip=0.0)
# No --data and no GPU: a width-16 DarkIR on small crops, 3 folds in minutes on 2 cores.
DEMO_BUDGET = dict(steps=150, crop=96, batch_size=4, width=16, lr=1e-3, warmup=20, val_every=50,
                   save_every=50, log_every=10, workers=2, ema=0.99)


def train_fold(args, fold, train_set, val_set, criterion, side_criterion, device, fold_dir):
    """Train (or continue, under --resume) the model of fold ``fold`` in ``fold_dir``: the one loop
    every fold runs. A fold whose last.pt already reached --steps is left as it is."""
    resume_path, complete = fold_resume_path(args, fold, fold_dir)
    if complete:
        return
    fold_seed = args.seed + fold
    seed_everything(fold_seed)

    # --- model --------------------------------------------------------------------------------
    model_kwargs = darkir_kwargs(args)
    model = DarkIR(**model_kwargs)
    train_model = prepare_model(model, args, device, f"DarkIR, fold {fold}/{args.folds}")
    print(f"fold {fold}/{args.folds}: {len(train_set)} training / {len(val_set)} validation pairs")

    # --- optimizer ----------------------------------------------------------------------------
    train_step = make_train_step(model, args, device)
    config = {**vars(args), "fold": fold, "fold_seed": fold_seed, "model": model_spec(model, model_kwargs)}
    state = TrainingState(model=model, train_step=train_step, config=config)

    # --- resume -------------------------------------------------------------------------------
    run = Run(args, state, device, run_dir=fold_dir, resume=resume_path or False,
              name=f"{args.script} fold {fold}/{args.folds}", summary=False)  # the CV summary closes the run
    batches = run.train_batches(train_set, seed=fold_seed)

    # --- loop ---------------------------------------------------------------------------------
    with run.training(val_loader(val_set, workers=min(args.workers, 2))):
        while run.step < args.steps:
            batch = next(batches)
            inp = batch["input"].to(device, non_blocking=True)
            target = batch["target"].to(device, non_blocking=True)
            with autocast(device, args.amp):
                side, pred = train_model(inp, side_loss=True)
            losses = criterion(pred.float(), target, inp)
            if args.side_weight > 0:
                side_value = side_criterion(side, target)
                losses["loss"] = losses["loss"] + args.side_weight * side_value
                losses["side"] = side_value.detach()
            train_step(losses["loss"])
            # --- validation / checkpoint: logged, validated and saved at their intervals ----------
            run.end_step(losses)


def main(argv=None):
    # --- config -----------------------------------------------------------------------------
    parser = base_parser(__doc__, **RECIPE)
    add_darkir_args(parser)
    add_vgg_args(parser)
    parser.add_argument("--folds", type=int, default=3, help="number of cross-validation folds (>= 2)")
    parser.add_argument("--l1-weight", type=float, default=1.0)
    parser.add_argument("--perceptual-weight", type=float, default=0.1, help="VGG19 feature L1")
    parser.add_argument("--ssim-weight", type=float, default=0.2, help="1 - SSIM")
    parser.add_argument("--side-weight", type=float, default=0.0,
                        help="L1 of DarkIR's 1/8-scale side output against the downscaled target (0: off)")
    args = parse_args(parser, argv, DEMO_BUDGET, script="train_darkir_cv")
    resume_folder(args)  # --resume OUT continues the unfinished folds in OUT

    # --- setup --------------------------------------------------------------------------------
    device, run_dir = setup(args)

    # --- data ---------------------------------------------------------------------------------
    folds, _ = build_fold_datasets(args, args.folds)

    # --- loss (shared by the folds: VGG19 is loaded once) ---------------------------------------
    criterion = CombinedLoss({
        "l1": (args.l1_weight, L1Loss()),
        # VGG19 is only loaded when used (a weight-0 term is never built or computed).
        "perceptual": (args.perceptual_weight,
                       VGGPerceptualLoss(vgg_weights=args.vgg_weights) if args.perceptual_weight else None),
        "ssim": (args.ssim_weight, SSIMLoss()),
    }).to(device)
    side_criterion = SideOutputLoss()

    # --- folds --------------------------------------------------------------------------------
    for fold, (train_set, val_set) in enumerate(folds, start=1):
        train_fold(args, fold, train_set, val_set, criterion, side_criterion, device, run_dir / f"fold_{fold}")

    # --- summary: each fold's best.pt on its own validation fold ------------------------------
    return write_fold_summary(run_dir, folds, args)


if __name__ == "__main__":
    run_cli(main)
