"""The one command-line builder: every script gets the shared flags here and adds only its own.

    parser = base_parser(__doc__, crop=512, steps=50_000)   # recipe defaults
    parser.add_argument("--window-weight", type=float, default=0.5)
    args = parse_args(parser, argv, demo_budget={"steps": 300, "crop": 64})

With no ``--data`` the built-in demo dataset is used; on a machine without a GPU the ``demo_budget``
then replaces every default the user did not set explicitly, so the no-argument run finishes in
minutes on a laptop CPU and says so.
"""
import argparse
import copy
import sys
from pathlib import Path

from data.mixup import MIXUP_BETA

from .checkpoint import add_trust_flag, set_trust_checkpoints
from .training import resolve_amp, select_device

OOM_HINT = "on out-of-memory lower --batch-size or --crop, or add --grad-checkpoint / --amp bf16"


def base_parser(description: str, **defaults) -> argparse.ArgumentParser:
    """An ArgumentParser holding the shared flags; ``defaults`` override their default values."""
    parser = argparse.ArgumentParser(description=description,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    data = parser.add_argument_group("data")
    data.add_argument("--data", default=None, help="paired data folder (see README: accepted layouts); "
                      "omitted: the built-in demo dataset")
    data.add_argument("--val-data", default=None, help="separate validation folder (any accepted layout)")
    data.add_argument("--val-fraction", type=float, default=0.1,
                      help="fraction of --data held out for validation when it has no val split")
    data.add_argument("--crop", type=int, default=512, help=f"training crop size in pixels ({OOM_HINT})")
    data.add_argument("--val-crop", type=int, default=0, help="centre-crop validation images (0: whole images)")
    data.add_argument("--val-tile", type=int, default=0,
                      help="validate large images in tiles of this size (0: whole images)")
    data.add_argument("--workers", type=int, default=4, help="DataLoader worker processes for decoding")
    data.add_argument("--cache", action="store_true",
                      help="decode each photo once into a memory-mapped pixel cache on disk, shared by all "
                      "workers and runs; crops then read only their rows (folder: --cache-dir)")
    data.add_argument("--cache-dir", default=None, metavar="DIR",
                      help="pixel cache folder (default: $REHDR_CACHE/pixels, REHDR_CACHE defaulting to "
                      "~/.cache/realestate-hdr)")
    train = parser.add_argument_group("training")
    train.add_argument("--steps", type=int, default=50_000, help="optimizer steps in total")
    train.add_argument("--batch-size", type=int, default=4, help=f"images per micro-batch ({OOM_HINT})")
    train.add_argument("--grad-accum", type=positive_int, default=1, metavar="N",
                       help="micro-batches per optimizer step: N x --batch-size images per step in "
                       "the memory of one micro-batch")
    train.add_argument("--progressive", default=None, metavar="STEPS:CROP:BATCH,...",
                       help="progressive patches: stages of STEPS optimizer steps at CROP px and BATCH "
                       "images (replacing --crop/--batch-size), e.g. 20000:128:8,20000:256:2,10000:384:1; "
                       "'official': Restormer's 6 stages (128 px x 8 ... 384 px x 1) scaled to --steps")
    train.add_argument("--lr", type=float, default=3e-4, help="peak AdamW learning rate")
    train.add_argument("--weight-decay", type=float, default=1e-4, help="AdamW weight decay")
    train.add_argument("--warmup", type=int, default=1000, help="linear warm-up steps before the cosine decay")
    train.add_argument("--grad-clip", type=float, default=0.01,
                       help="clip the global gradient norm (0: off); Restormer's recipe uses 0.01")
    train.add_argument("--ema", type=float, default=0.999, metavar="DECAY",
                       help="EMA decay of the weights used for validation/checkpoints (0: off)")
    train.add_argument("--amp", choices=("none", "bf16", "fp16"), default=None,
                       help="mixed precision (default: bf16 on CUDA, none on CPU); master weights stay fp32")
    train.add_argument("--grad-checkpoint", action="store_true",
                       help="activation checkpointing: less memory for large crops, ~30%% slower")
    train.add_argument("--compile", action="store_true", help="torch.compile the model (CUDA)")
    train.add_argument("--pretrained", default=None, help="initialise the model from these weights "
                       "(official .pth files with params/params_ema, or a checkpoint of this codebase)")
    run = parser.add_argument_group("run")
    run.add_argument("--out", default=None, help="run folder (default: runs/<script name>)")
    run.add_argument("--resume", default=None, help="continue from a checkpoint (a .pt file or a run folder)")
    add_trust_flag(run)
    run.add_argument("--device", default="auto", help="auto (CUDA if available), cpu, cuda, cuda:1, ...")
    run.add_argument("--seed", type=int, default=0, help="seed of everything random (saved with the run)")
    run.add_argument("--val-every", type=int, default=1000, help="validate every N optimizer steps")
    run.add_argument("--save-every", type=int, default=1000, help="write last.pt every N optimizer steps")
    run.add_argument("--keep-best", type=positive_int, default=1, metavar="K",
                     help="besides best.pt, keep the K best validated checkpoints as best_stepNNNNNNN.pt "
                     "(1: best.pt only)")
    run.add_argument("--log-every", type=int, default=50, help="log training losses every N steps")
    run.add_argument("--num-samples", type=int, default=4, help="validation images in the sample grid")
    parser.set_defaults(**defaults)
    return parser


def explicit_flags(parser: argparse.ArgumentParser, argv) -> set:
    """Names (dests) of the options actually given on the command line."""
    probe = copy.deepcopy(parser)
    for action in probe._actions:
        action.default = argparse.SUPPRESS
    probe._defaults.clear()  # recipe defaults from set_defaults() must not count as given
    return set(vars(probe.parse_args(argv)))


def parse_args(parser: argparse.ArgumentParser, argv=None, demo_budget: dict = None,
               script: str = None) -> argparse.Namespace:
    """Parse, resolve automatic values (device, AMP, run folder, demo data) and return the config."""
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parser.parse_args(argv)
    given = explicit_flags(parser, argv)
    set_trust_checkpoints(args.trust_checkpoint)
    args.script = script or Path(sys.argv[0]).stem
    args.device = str(select_device(args.device))
    args.demo = args.data is None
    if args.demo:
        from data.demo import ensure_demo_data
        args.data = str(ensure_demo_data(seed=0))
        message = f"No --data given: training on the built-in demo dataset ({args.data})."
        if demo_budget and not args.device.startswith("cuda"):
            applied = {k: v for k, v in demo_budget.items() if k not in given}
            for name, value in applied.items():
                setattr(args, name, value)
            message += (" No GPU: using the CPU demo budget (" + ", ".join(f"--{k.replace('_', '-')} {v}"
                        for k, v in applied.items()) + "); pass a flag to override it.")
        print(message)
    args.amp = resolve_amp(args.amp, select_device(args.device))
    if args.out is None:
        args.out = str(Path("runs") / args.script)
    return args


def add_restormer_args(parser: argparse.ArgumentParser) -> None:
    """Restormer's size flags (defaults: Restormer Base, 26.1M parameters)."""
    model = parser.add_argument_group("model (Restormer)")
    model.add_argument("--dim", type=int, default=48, help="channels at full resolution")
    model.add_argument("--num-blocks", type=int, nargs=4, default=[4, 6, 6, 8], help="blocks per level")
    model.add_argument("--num-refinement-blocks", type=int, default=4)
    model.add_argument("--heads", type=int, nargs=4, default=[1, 2, 4, 8], help="attention heads per level")
    model.add_argument("--ffn-expansion-factor", type=float, default=2.66)
    model.add_argument("--layernorm", choices=("WithBias", "BiasFree"), default="WithBias",
                       help="BiasFree to fine-tune from the real_denoising weights")


def restormer_kwargs(args, inp_channels: int = 3) -> dict:
    """Restormer constructor arguments from the flags of :func:`add_restormer_args`."""
    return dict(inp_channels=inp_channels, out_channels=3, dim=args.dim, num_blocks=list(args.num_blocks),
                num_refinement_blocks=args.num_refinement_blocks, heads=list(args.heads),
                ffn_expansion_factor=args.ffn_expansion_factor, bias=False, LayerNorm_type=args.layernorm)


def add_mambair_unet_args(parser: argparse.ArgumentParser) -> None:
    """MambaIR-UNet's size flags (defaults: the official real-denoising U-Net, 26.8M parameters)."""
    model = parser.add_argument_group("model (MambaIR-UNet)")
    model.add_argument("--dim", type=int, default=48, help="channels at full resolution (at least 30)")
    model.add_argument("--num-blocks", type=int, nargs=4, default=[4, 6, 6, 8], help="VSS blocks per level")
    model.add_argument("--num-refinement-blocks", type=int, default=4)
    model.add_argument("--mlp-ratio", type=float, default=1.5, help="SS2D channel expansion")


def mambair_unet_kwargs(args) -> dict:
    """MambaIRUNet constructor arguments from the flags of :func:`add_mambair_unet_args`."""
    return dict(inp_channels=3, out_channels=3, dim=args.dim, num_blocks=list(args.num_blocks),
                num_refinement_blocks=args.num_refinement_blocks, mlp_ratio=args.mlp_ratio, bias=False)


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text}")
    return value


def add_schedule_args(parser: argparse.ArgumentParser, optimizer: str = "adamw", schedule: str = "cosine",
                      milestones=(0.5, 0.8, 0.9, 0.95), gamma: float = 0.5) -> None:
    """Optimizer and lr-schedule choice for :func:`utils.training.make_train_step` (without these flags it
    uses AdamW + cosine). The defaults given are the script's recipe; the milestone defaults are
    BasicSR's [250k, 400k, 450k, 475k] of 500k iterations (HAT, DAT, SwinIR) as fractions of --steps."""
    group = parser.add_argument_group("optimizer")
    group.add_argument("--optimizer", choices=("adamw", "adam"), default=optimizer,
                       help=f"adamw: decoupled weight decay; adam: L2 weight decay (default {optimizer})")
    group.add_argument("--schedule", choices=("cosine", "multistep"), default=schedule,
                       help="cosine decay after the warm-up, or the lr times --lr-gamma at each milestone "
                            f"(default {schedule})")
    group.add_argument("--milestones", type=float, nargs="+", default=list(milestones), metavar="FRACTION",
                       help="multistep: fractions of --steps where the lr drops (default %(default)s)")
    group.add_argument("--lr-gamma", type=float, default=gamma, help="multistep: lr factor per milestone")


def run_cli(main) -> None:
    """Run a script's ``main()``; user errors (bad data, bad checkpoint, a diverging loss, a full
    disk) end as one line on stderr with exit code 2 instead of a traceback."""
    from data.io import DiskFullError, ImageReadError
    from data.pairs import DataLayoutError
    from .checkpoint import CheckpointError
    from .training import NonFiniteLossError
    try:
        main()
    except (DataLayoutError, ImageReadError, CheckpointError, NonFiniteLossError, DiskFullError,
            FileNotFoundError, ValueError, ImportError) as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)


# DarkIR's catalog sizes: the widths of models.darkir.darkir_m / darkir_l (every other argument is
# the official default).
DARKIR_SIZES = {"m": 32, "l": 64}


def add_darkir_args(parser: argparse.ArgumentParser) -> None:
    """DarkIR's size flags (defaults: DarkIR-m, 3,321,638 parameters; ``--size l``: 12,957,254)."""
    model = parser.add_argument_group("model (DarkIR)")
    model.add_argument("--size", choices=sorted(DARKIR_SIZES), default="m",
                       help="catalog size: m (width 32, the published DarkIR_384.pt) or l (width 64)")
    model.add_argument("--width", type=int, default=None, help="channels at full resolution (overrides --size)")
    model.add_argument("--enc-blocks", type=int, nargs=3, default=[1, 2, 3], help="encoder blocks per level")
    model.add_argument("--dec-blocks", type=int, nargs=3, default=[3, 1, 1], help="decoder blocks per level")
    model.add_argument("--middle-blocks-enc", type=int, default=2, help="frequency (encoder) blocks at the bottleneck")
    model.add_argument("--middle-blocks-dec", type=int, default=2, help="dilated (decoder) blocks at the bottleneck")
    model.add_argument("--dilations", type=int, nargs="+", default=[1, 4, 9],
                       help="dilations of the parallel depth-wise branches of the decoder blocks")


def darkir_kwargs(args) -> dict:
    """DarkIR constructor arguments from the flags of :func:`add_darkir_args`."""
    return dict(img_channel=3, width=args.width or DARKIR_SIZES[args.size],
                middle_blk_num_enc=args.middle_blocks_enc, middle_blk_num_dec=args.middle_blocks_dec,
                enc_blk_nums=list(args.enc_blocks), dec_blk_nums=list(args.dec_blocks),
                dilations=list(args.dilations), extra_depth_wise=True)


# The Retinexformer / RetinexMamba training recipe of the official option files
# (Options/RetinexFormer_{LOL_v1,LOL_v2_real,NTIRE}.yml, Options/RetinexMamba_LOL_v1.yml): Adam
# (AdamW with no weight decay is the same update) at 2e-4, no warm-up, 128-px crops, batch 8, 150k
# steps in two cosine cycles of 46k + 104k steps with eta_mins 3e-4 and 1e-6, gradient norm clipped
# at 0.01 (BasicSR's use_grad_clip, the shared default), mixup with beta 1.2 as an option.
RETINEX_RECIPE = dict(lr=2e-4, weight_decay=0.0, warmup=0, crop=128, batch_size=8, steps=150_000)


def add_retinex_args(parser: argparse.ArgumentParser, d_state: bool = False) -> None:
    """RetinexFormer / RetinexMamba size flags (defaults: the published n_feat 40, 1 stage, blocks
    1 2 2; ``d_state``: RetinexMamba's state size at full resolution) and the recipe's
    schedule and mixup flags."""
    model = parser.add_argument_group("model (Retinex)")
    model.add_argument("--n-feat", type=int, default=40, help="channels at full resolution (divisible by 4)")
    model.add_argument("--stage", type=int, default=1, help="estimator + restorer stages")
    model.add_argument("--num-blocks", type=int, nargs=3, default=[1, 2, 2],
                       help="guided blocks at full, half resolution and the quarter-resolution bottleneck")
    if d_state:
        model.add_argument("--d-state", type=int, default=16,
                           help="state size of the selective scans at full resolution (doubles per level)")
    schedule = parser.add_argument_group("schedule and augmentation (the official recipe)")
    schedule.add_argument("--cycles", type=float, nargs="+", default=[46, 104],
                          help="relative lengths of the cosine cycles that share --steps (official: 46k + 104k)")
    schedule.add_argument("--cycle-min-lrs", type=float, nargs="+", default=[3e-4, 1e-6],
                          help="lr each cycle anneals to (one per cycle; official: 3e-4 -- a rising first "
                               "cycle -- then 1e-6)")
    schedule.add_argument("--mixup", action="store_true",
                          help="mix half of the batches with a permutation of themselves (official: on)")
    schedule.add_argument("--mixup-beta", type=float, default=MIXUP_BETA, help="Beta(b, b) of the mixing weight")


def retinex_kwargs(args, in_channels: int = 3) -> dict:
    """RetinexFormer / RetinexMamba constructor arguments from :func:`add_retinex_args`' flags."""
    kwargs = dict(in_channels=in_channels, out_channels=3, n_feat=args.n_feat, stage=args.stage,
                  num_blocks=list(args.num_blocks))
    if hasattr(args, "d_state"):
        kwargs["d_state"] = args.d_state
    return kwargs
