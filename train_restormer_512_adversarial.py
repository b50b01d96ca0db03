"""Restormer Base + PatchGAN discriminator on 512 crops: L1 + adversarial + Gram style + histogram.

CATALOG.md "train_restormer_512_adversarial.py": L1 regression produces the "average", muted colours
of the plausible edits; a conditional discriminator (pix2pix's 70x70 PatchGAN, models/discriminator.py,
shown the as-shot input beside the image) and VGG19 Gram-matrix style statistics push the output
towards the target *distribution*, and a histogram term matches each channel's spread of values.
Adversarial loss: hinge (with spectral norm, the default) or LSGAN (with instance norm, as pix2pix);
losses/adversarial.py. The discriminator, its optimizer, scheduler and scaler are saved in every
checkpoint and restored by --resume. The catalog lists no weights; the defaults below are ours.
VGG19 needs torchvision's ImageNet weights (--vgg-weights; the smoke test uses random ones).

Usage:
    python train_restormer_512_adversarial.py --data /path/to/pairs --vgg-weights /path/to/vgg19-dcbb9e9d.pth
    python train_restormer_512_adversarial.py                 # built-in demo data, VGG from torchvision's cache
    python train_restormer_512_adversarial.py --data DATA --resume runs/train_restormer_512_adversarial
CPU smoke test (seconds):
    python train_restormer_512_adversarial.py --steps 4 --crop 32 --batch-size 2 --dim 8 \
        --num-blocks 1 1 1 1 --num-refinement-blocks 1 --heads 1 1 1 1 --disc-channels 8 --val-every 2 \
        --vgg-weights random --out /tmp/smoke
"""

from data.build import build_datasets
from data.loaders import val_loader
from losses import CombinedLoss, L1Loss
from losses.adversarial import AdversarialLoss, GAN_LOSSES
from losses.histogram import HISTOGRAM_BINS, HistogramLoss
from losses.perceptual import GramStyleLoss, add_vgg_args
from models.discriminator import NORMS, PatchDiscriminator
from models.restormer import Restormer
from utils.checkpoint import model_spec
from utils.cli import add_restormer_args, base_parser, parse_args, restormer_kwargs, run_cli
from utils.run import Run, prepare_model, setup
from utils.training import TrainingState, autocast, make_train_step

# The GAN terms move up and down while the two networks compete; the fixed-batch smoke test follows L1.
SMOKE_LOSS_KEY = "l1"
# No --data and no GPU: a small Restormer on small crops, so the demo finishes in ~10 min on 2 cores.
DEMO_BUDGET = dict(steps=400, crop=96, batch_size=4, dim=16, num_blocks=[1, 2, 2, 2],
                   num_refinement_blocks=1, heads=[1, 2, 4, 8], lr=1e-3, warmup=20, grad_clip=0.0,
                   val_every=100, save_every=100, log_every=10, workers=2, ema=0.99)


def main(argv=None):
    # --- config -----------------------------------------------------------------------------
    parser = base_parser(__doc__)
    add_restormer_args(parser)
    add_vgg_args(parser)
    parser.add_argument("--l1-weight", type=float, default=1.0)
    parser.add_argument("--adversarial-weight", type=float, default=0.01, help="pix2pix's 1:100 to L1")
    # Gram entries of VGG features are ~1e-3, so the style term needs a large weight to matter.
    parser.add_argument("--style-weight", type=float, default=50.0, help="VGG19 Gram-matrix L1")
    parser.add_argument("--histogram-weight", type=float, default=0.2, help="per-channel histogram EMD")
    parser.add_argument("--histogram-bins", type=int, default=HISTOGRAM_BINS)
    parser.add_argument("--gan-loss", choices=GAN_LOSSES, default="hinge")
    parser.add_argument("--disc-norm", choices=NORMS, default="spectral")
    parser.add_argument("--disc-channels", type=int, default=64, help="width of the discriminator's first layer")
    parser.add_argument("--disc-layers", type=int, default=3, help="3: the 70x70 PatchGAN")
    parser.add_argument("--disc-lr", type=float, default=1e-4, help="discriminator AdamW lr (betas 0.5, 0.999)")
    args = parse_args(parser, argv, DEMO_BUDGET, script="train_restormer_512_adversarial")

    # --- setup --------------------------------------------------------------------------------
    device, run_dir = setup(args)

    # --- data ---------------------------------------------------------------------------------
    train_set, val_set = build_datasets(args)

    # --- model --------------------------------------------------------------------------------
    model_kwargs = restormer_kwargs(args)
    model = Restormer(**model_kwargs, grad_checkpoint=args.grad_checkpoint)
    train_model = prepare_model(model, args, device, "Restormer")
    discriminator = PatchDiscriminator(6, args.disc_channels, args.disc_layers, args.disc_norm).to(device)
    print(f"discriminator: PatchGAN, {sum(p.numel() for p in discriminator.parameters()):,} parameters")

    # --- loss ---------------------------------------------------------------------------------
    adversarial = AdversarialLoss(discriminator, args.gan_loss)
    criterion = CombinedLoss({
        "l1": (args.l1_weight, L1Loss()),
        "adversarial": (args.adversarial_weight, adversarial),
        "style": (args.style_weight, GramStyleLoss(vgg_weights=args.vgg_weights) if args.style_weight else None),
        "histogram": (args.histogram_weight, HistogramLoss(args.histogram_bins)),
    }).to(device)

    # --- optimizer: AdamW + cosine warm-up, EMA, fp16 loss scaling, clipping, non-finite guard ----
    train_step = make_train_step(model, args, device)
    # the discriminator's own step, pix2pix-style: Adam betas (0.5, 0.999), no decay, no clipping, no EMA
    disc_step = make_train_step(discriminator, args, device, lr=args.disc_lr, weight_decay=0.0,
                                betas=(0.5, 0.999), grad_clip=0.0, ema=False)
    config = {**vars(args), "model": model_spec(model, model_kwargs)}
    state = TrainingState(model=model, train_step=train_step, config=config,
                          extra_modules={"discriminator": discriminator, "disc_step": disc_step})

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
                # the discriminator's step: tell the target from the (detached) output, given the input
                disc_loss = adversarial.discriminator_loss(pred.float(), target, inp)
            disc_step(disc_loss)
            # the generator's step; the discriminator is frozen inside its adversarial term
            with autocast(device, args.amp):
                losses = criterion(pred.float(), target, inp)
            train_step(losses["loss"])
            # --- validation / checkpoint: logged, validated and saved at their intervals ----------
            run.end_step({**losses, "discriminator": disc_loss.detach()})
    return run


if __name__ == "__main__":
    run_cli(main)
