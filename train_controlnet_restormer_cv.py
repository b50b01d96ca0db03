"""Zero-convolution Restormer (ControlNet's training strategy) + L1 + VGG + SSIM, with k-fold cross-validation.

CATALOG.md "ControlNet-Restormer CV": ControlNet's robustness tricks without diffusion: a locked pretrained
Restormer (the published SIDD or GoPro weights via --pretrained) plus a trainable copy of its encoder
joined through zero-initialised 1x1 convolutions (models/zero_conv.py), so every fold starts exactly at the
pretrained output and cannot forget it. Loss: L1 + VGG19 perceptual (losses/perceptual.py) + (1 - SSIM)
(losses/structural.py), with the weights of the other perceptual recipes (0.1, 0.2; the catalog gives none).

The training pairs are split into --folds disjoint folds (data/folds.py, the one fold implementation,
shared with train_darkir_cv.py): fold k trains on the other folds and validates on fold k, so every pair
is validated on once. Run folder: OUT/fold_1 ... OUT/fold_k (complete run folders) and OUT/summary.json
(per fold the validation PSNR/SSIM/L1 of its best.pt, their mean and sample standard deviation).
--resume OUT continues the unfinished folds. Pairs the layout sets aside for validation (val/ split,
--val-data, --val-fraction) stay out of every fold. enhance.py / evaluate.py --checkpoint OUT run the
ensemble of the fold models.

Usage:
    python train_controlnet_restormer_cv.py --data /path/to/pairs --pretrained motion_deblurring.pth \
        --vgg-weights vgg19-dcbb9e9d.pth                                        # GoPro Restormer
    python train_controlnet_restormer_cv.py --data /path/to/pairs --pretrained real_denoising.pth \
        --layernorm BiasFree --vgg-weights vgg19-dcbb9e9d.pth                   # SIDD Restormer
CPU smoke test (seconds):
    python train_controlnet_restormer_cv.py --folds 2 --steps 4 --crop 32 --batch-size 2 --dim 8 \
        --num-blocks 1 1 1 1 --num-refinement-blocks 1 --heads 1 1 1 1 --val-every 2 --vgg-weights random \
        --out /tmp/smoke
"""

import torch

from data.folds import build_fold_datasets
from data.loaders import val_loader
from losses import CombinedLoss, L1Loss
from losses.perceptual import VGGPerceptualLoss, add_vgg_args
from losses.structural import SSIMLoss
from models.zero_conv import ZeroConvRestormer
from utils.checkpoint import load_pretrained_restormer, model_spec
from utils.cli import add_restormer_args, base_parser, parse_args, restormer_kwargs, run_cli
from utils.folds import fold_resume_path, resume_folder, write_fold_summary
from utils.run import Run, setup
from utils.training import TrainingState, autocast, make_train_step, seed_everything

# Fine-tuning a pretrained model: a lower peak lr than training from scratch, a short warm-up.
RECIPE = dict(lr=1e-4, steps=10_000, warmup=200)
# No --data and no GPU: a small model on small crops, 3 folds in minutes on 2 cores.
DEMO_BUDGET = dict(steps=150, crop=96, batch_size=4, dim=16, num_blocks=[1, 2, 2, 2], num_refinement_blocks=1,
                   heads=[1, 2, 4, 8], lr=1e-3, warmup=20, val_every=50, save_every=50, log_every=10,
                   workers=2, ema=0.99)


def train_fold(args, fold, train_set, val_set, criterion, device, fold_dir):
    """Train (or continue, under --resume) fold ``fold`` in ``fold_dir``; a fold whose last.pt already
    reached --steps is left as it is."""
    resume_path, complete = fold_resume_path(args, fold, fold_dir)
    if complete:
        return
    # --- model: locked pretrained Restormer + trainable encoder copy through zero convolutions --
    # Every fold starts from the same model: the pretrained one (without --pretrained, the same random one).
    seed_everything(args.seed)
    model_kwargs = restormer_kwargs(args)
    model = ZeroConvRestormer(**model_kwargs, grad_checkpoint=args.grad_checkpoint)
    if args.pretrained:
        load_pretrained_restormer(model, args.pretrained)
    else:
        print("warning: no --pretrained: the locked Restormer is randomly initialised (smoke tests only)")
    model.to(device)
    fold_seed = args.seed + fold
    seed_everything(fold_seed)
    print(f"fold {fold}/{args.folds}: ZeroConvRestormer, "
          f"{sum(p.numel() for p in model.parameters() if p.requires_grad):,} trainable parameters, "
          f"{len(train_set)} training / {len(val_set)} validation pairs")
    train_model = torch.compile(model) if args.compile else model

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
                pred = train_model(inp)
            losses = criterion(pred.float(), target, inp)
            train_step(losses["loss"])
            # --- validation / checkpoint: logged, validated and saved at their intervals ----------
            run.end_step(losses)


def main(argv=None):
    # --- config -----------------------------------------------------------------------------
    parser = base_parser(__doc__, **RECIPE)
    add_restormer_args(parser)
    add_vgg_args(parser)
    parser.add_argument("--folds", type=int, default=3, help="number of cross-validation folds (>= 2)")
    parser.add_argument("--l1-weight", type=float, default=1.0)
    parser.add_argument("--perceptual-weight", type=float, default=0.1, help="VGG19 feature L1")
    parser.add_argument("--ssim-weight", type=float, default=0.2, help="1 - SSIM")
    args = parse_args(parser, argv, DEMO_BUDGET, script="train_controlnet_restormer_cv")
    resume_folder(args)  # --resume OUT continues the unfinished folds in OUT

    # --- setup --------------------------------------------------------------------------------
    device, run_dir = setup(args)

    # --- data ---------------------------------------------------------------------------------
    folds, _ = build_fold_datasets(args, args.folds)

    # --- loss (shared by the folds: VGG19 is loaded once) ---------------------------------------
    criterion = CombinedLoss({
        "l1": (args.l1_weight, L1Loss()),
        "perceptual": (args.perceptual_weight,
                       VGGPerceptualLoss(vgg_weights=args.vgg_weights) if args.perceptual_weight else None),
        "ssim": (args.ssim_weight, SSIMLoss()),
    }).to(device)

    # --- folds --------------------------------------------------------------------------------
    for fold, (train_set, val_set) in enumerate(folds, start=1):
        train_fold(args, fold, train_set, val_set, criterion, device, run_dir / f"fold_{fold}")

    # --- summary: each fold's best.pt on its own validation fold ------------------------------
    return write_fold_summary(run_dir, folds, args)

if __name__ == "__main__":
    run_cli(main)
