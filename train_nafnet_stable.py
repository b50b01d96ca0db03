"""NAFNet + L1, the stable recipe: fp32 only, a conservative lr, aggressive gradient clipping.

CATALOG.md "Stable NAFNet": NAFNet (models/nafnet.py; default the official SIDD width-32 model,
29.2M parameters) trained with plain L1 -- the recipe that "fixes NaN loss issues". NAFNet's gates
multiply activations (no bounded non-linearity), so they grow quickly once a large step inflates
the weights; in fp16 they pass 65504 and the loss turns inf/NaN. Hence: fp32 master weights *and*
activations (``--amp`` other than none is refused), lr 1e-4 (the official recipe uses 1e-3), the
global gradient norm clipped to 0.01, AdamW betas (0.9, 0.9) and no weight decay as in the official
NAFNet training options. tests/test_nafnet.py shows the difference: the same NAFNet with fp16 and
lr 1e-1 hits the non-finite guard, this recipe does not.

Usage:
    python train_nafnet_stable.py --data /path/to/pairs                      # the real recipe
    python train_nafnet_stable.py --data /path/to/pairs --pretrained NAFNet-SIDD-width32.pth
    python train_nafnet_stable.py                                            # built-in demo data
    python train_nafnet_stable.py --data DATA --resume runs/train_nafnet_stable
CPU smoke test (seconds):
    python train_nafnet_stable.py --steps 4 --crop 32 --batch-size 2 --width 8 --middle-blk-num 1 \
        --enc-blk-nums 1 1 1 1 --dec-blk-nums 1 1 1 1 --val-every 2 --out /tmp/smoke
"""
from data.build import build_datasets
from data.loaders import train_batches, val_loader
from losses import CombinedLoss, L1Loss
from models.nafnet import NAFNet
from utils.checkpoint import model_spec
from utils.cli import base_parser, parse_args, run_cli
from utils.run import Run, prepare_model, setup
from utils.training import TrainingState, make_train_step

# The stable optimisation recipe; BETAS and weight decay 0 are the official NAFNet options' AdamW.
RECIPE = dict(lr=1e-4, grad_clip=0.01, weight_decay=0.0, warmup=2000, amp="none")
BETAS = (0.9, 0.9)
# No --data and no GPU: a width-16 NAFNet on small crops, so the demo finishes in minutes on 2 cores.
DEMO_BUDGET = dict(steps=400, crop=96, batch_size=4, width=16, middle_blk_num=1, enc_blk_nums=[1, 1, 1, 1],
                   dec_blk_nums=[1, 1, 1, 1], lr=5e-4, warmup=20, val_every=100, save_every=100,
                   log_every=10, workers=2, ema=0.99)


def main(argv=None):
    # --- config -----------------------------------------------------------------------------
    parser = base_parser(__doc__, **RECIPE)
    model_args = parser.add_argument_group("model (NAFNet; defaults: the official SIDD width-32 model)")
    model_args.add_argument("--width", type=int, default=32, help="channels at full resolution")
    model_args.add_argument("--middle-blk-num", type=int, default=12, help="NAFBlocks at the bottleneck")
    model_args.add_argument("--enc-blk-nums", type=int, nargs="+", default=[2, 2, 4, 8],
                            help="NAFBlocks per encoder level (one 2x downsampling each)")
    model_args.add_argument("--dec-blk-nums", type=int, nargs="+", default=[2, 2, 2, 2],
                            help="NAFBlocks per decoder level (as many levels as the encoder)")
    args = parse_args(parser, argv, DEMO_BUDGET, script="train_nafnet_stable")
    if args.amp != "none":
        raise ValueError(f"--amp {args.amp}: the stable NAFNet recipe trains in fp32 only (NAFNet's "
                         "multiplicative gates overflow half precision); use --amp none")
    if len(args.enc_blk_nums) != len(args.dec_blk_nums):
        raise ValueError("--enc-blk-nums and --dec-blk-nums need the same number of levels")

    # --- setup --------------------------------------------------------------------------------
    device, run_dir = setup(args)

    # --- data ---------------------------------------------------------------------------------
    train_set, val_set = build_datasets(args)

    # --- model --------------------------------------------------------------------------------
    model_kwargs = dict(img_channel=3, width=args.width, middle_blk_num=args.middle_blk_num,
                        enc_blk_nums=list(args.enc_blk_nums), dec_blk_nums=list(args.dec_blk_nums))
    model = NAFNet(**model_kwargs)
    train_model = prepare_model(model, args, device, "NAFNet")

    # --- loss ---------------------------------------------------------------------------------
    criterion = CombinedLoss({"l1": (1.0, L1Loss())})

    # --- optimizer: AdamW (0.9, 0.9) + cosine warm-up, EMA, clipping, non-finite guard ----------
    train_step = make_train_step(model, args, device, betas=BETAS)
    config = {**vars(args), "model": model_spec(model, model_kwargs)}
    state = TrainingState(model=model, train_step=train_step, config=config)

    # --- resume -------------------------------------------------------------------------------
    run = Run(args, state, device)
    batches = train_batches(train_set, args.batch_size, args.seed, start_step=run.step,
                            workers=args.workers, pin_memory=device.type == "cuda")

    # --- loop: fp32 forward, no autocast ------------------------------------------------------
    with run.training(val_loader(val_set, workers=min(args.workers, 2))):
        while run.step < args.steps:
            batch = next(batches)
            inp = batch["input"].to(device, non_blocking=True)
            target = batch["target"].to(device, non_blocking=True)
            pred = train_model(inp)
            losses = criterion(pred, target, inp)
            train_step(losses["loss"])
            # --- validation / checkpoint: logged, validated and saved at their intervals ----------
            run.end_step(losses)
    return run


if __name__ == "__main__":
    run_cli(main)
