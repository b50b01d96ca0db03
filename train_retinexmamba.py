"""RetinexMamba + Charbonnier + SSIM + focal frequency + VGG + LPIPS + LAB + illumination consistency.

CATALOG.md Category 5 "RetinexMamba Training": RetinexMamba (models/retinexmamba.py) keeps
Retinexformer's illumination estimator and guided U-Net but restores with state-space (Mamba)
blocks: four-direction selective scans over the image, linear in its size (models/scan.py: mamba_ssm's
CUDA kernel when installed, else a pure-PyTorch parallel scan). Besides the image losses, the
**illumination-consistency** term (losses/illumination.py) asks the estimator's light-up map to
explain the luminance ratio between target and input, smoothly (an edge-aware total variation), so
the Retinex decomposition stays a decomposition. The catalog gives no weights; Charbonnier leads and
each other term is a fraction of it. Optimizer and schedule are the official recipe
(utils.cli.RETINEX_RECIPE: Adam 2e-4, two cosine cycles, 128 crops, batch 8; --mixup).
--pretrained takes the published RetinexMamba files (both key namings). The validation grid shows
input | output | target | the light-up map.

Usage:
    python train_retinexmamba.py --data /path/to/pairs --vgg-weights vgg19-dcbb9e9d.pth \
        --lpips-weights alexnet-owt-7be5be79.pth
    python train_retinexmamba.py --vgg-weights random --lpips-weights random   # demo data, code check
    python train_retinexmamba.py --data DATA --resume runs/train_retinexmamba
CPU smoke test (seconds):
    python train_retinexmamba.py --steps 4 --crop 32 --batch-size 2 --n-feat 4 --num-blocks 1 1 1 \
        --d-state 2 --val-every 2 --vgg-weights random --lpips-weights random --out /tmp/smoke
"""
from data.build import build_datasets
from data.loaders import val_loader
from data.mixup import mixup_pairs
from losses import CharbonnierLoss, CombinedLoss
from losses.frequency import FocalFrequencyLoss
from losses.illumination import IlluminationConsistencyLoss
from losses.lab import DeltaELoss
from losses.lpips import LPIPSLoss, add_lpips_args
from losses.perceptual import VGGPerceptualLoss, add_vgg_args
from losses.structural import SSIMLoss
from models.retinexmamba import RetinexMamba
from utils.checkpoint import model_spec
from utils.cli import RETINEX_RECIPE, add_retinex_args, base_parser, parse_args, retinex_kwargs, run_cli
from utils.run import Run, prepare_model, setup
from utils.training import TrainingState, autocast, cosine_restarts, make_train_step

# No --data and no GPU: a width-8 RetinexMamba on small crops. Still the slowest CPU demo of the
# catalog: the pure-PyTorch selective scan (models/scan.py) dominates every step.
DEMO_BUDGET = dict(steps=200, crop=48, batch_size=4, n_feat=8, num_blocks=[1, 1, 1], d_state=4, lr=1e-3,
                   warmup=20, cycle_min_lrs=[1e-3, 1e-5], val_every=50, save_every=50, log_every=10,
                   workers=2, ema=0.99)


def main(argv=None):
    # --- config -----------------------------------------------------------------------------
    parser = base_parser(__doc__, **RETINEX_RECIPE)
    add_retinex_args(parser, d_state=True)
    add_vgg_args(parser)
    add_lpips_args(parser)
    parser.add_argument("--charbonnier-weight", type=float, default=1.0)
    parser.add_argument("--ssim-weight", type=float, default=0.2, help="1 - SSIM")
    parser.add_argument("--frequency-weight", type=float, default=0.5, help="focal frequency loss")
    parser.add_argument("--perceptual-weight", type=float, default=0.1, help="VGG19 feature L1")
    parser.add_argument("--lpips-weight", type=float, default=0.1, help="LPIPS (AlexNet)")
    parser.add_argument("--lab-weight", type=float, default=0.5, help="mean Delta E 76 / 100")
    parser.add_argument("--illumination-weight", type=float, default=0.1,
                        help="illumination consistency of the estimator's light-up map")
    parser.add_argument("--illumination-smoothness", type=float, default=0.1,
                        help="weight of the map's edge-aware total variation inside that term")
    args = parse_args(parser, argv, DEMO_BUDGET, script="train_retinexmamba")

    # --- setup --------------------------------------------------------------------------------
    device, run_dir = setup(args)

    # --- data ---------------------------------------------------------------------------------
    train_set, val_set = build_datasets(args)

    # --- model --------------------------------------------------------------------------------
    model_kwargs = retinex_kwargs(args)
    model = RetinexMamba(**model_kwargs, grad_checkpoint=args.grad_checkpoint)
    train_model = prepare_model(model, args, device, "RetinexMamba")

    # --- loss ---------------------------------------------------------------------------------
    criterion = CombinedLoss({
        "charbonnier": (args.charbonnier_weight, CharbonnierLoss()),
        "ssim": (args.ssim_weight, SSIMLoss()),
        "frequency": (args.frequency_weight, FocalFrequencyLoss()),
        # VGG19 and LPIPS are only loaded when used (a weight-0 term is never built or computed).
        "perceptual": (args.perceptual_weight,
                       VGGPerceptualLoss(vgg_weights=args.vgg_weights) if args.perceptual_weight else None),
        "lpips": (args.lpips_weight, LPIPSLoss(weights=args.lpips_weights) if args.lpips_weight else None),
        "lab": (args.lab_weight, DeltaELoss()),
    }).to(device)
    illumination_loss = IlluminationConsistencyLoss(smoothness_weight=args.illumination_smoothness)

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
                pred, light_up = train_model(inp, return_illumination=True)
            losses = criterion(pred.float(), target, inp)
            if args.illumination_weight:
                illumination = illumination_loss(light_up.float(), target, inp)
                losses["illumination"] = illumination.detach()
                losses["loss"] = losses["loss"] + args.illumination_weight * illumination
            train_step(losses["loss"])
            # --- validation / checkpoint: logged, validated and saved at their intervals ----------
            run.end_step(losses)
    return run


if __name__ == "__main__":
    run_cli(main)
