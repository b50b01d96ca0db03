"""DarkIR + L1 + window-aware L1 in two phases: pre-train on MIT-Adobe FiveK, fine-tune on real estate.

CATALOG.md "DarkIR with FiveK Transfer": domain adaptation from general tone mapping. Phase 1
("pretrain") trains DarkIR on --pretrain-data, e.g. FiveK exported as input/ + expertC/ folders
(target folder names expertc / expert_c are accepted besides the usual ones; any layout of --data
works), at --lr; phase 2 ("finetune") continues from the phase-1 weights (the EMA weights when EMA is
on) on --data with a fresh optimizer, its own --finetune-lr and --finetune-warmup. Loss in both
phases: L1 + window-aware L1 (losses/window.py; weights of the baseline recipe), plus DarkIR's
optional side-output loss with --side-weight (losses/side_output.py; off by default).

Steps: --steps is the total of both phases and --pretrain-steps the length of phase 1, so the run's
step counter goes 0 .. --pretrain-steps (pre-training), then on to --steps (fine-tuning), and the
final last.pt holds step --steps like every other script. Extending --steps on resume extends the
fine-tuning. The run folder keeps both phases: one metrics.jsonl (a 'phase' record opens each
phase; its 'identity' record scores that phase's validation inputs), sample grids of both, config.json,
pretrain_last.pt and pretrain_best.pt (phase 1's final state and its best on the pre-training
validation pairs), then best.pt and last.pt of the fine-tuning. Each checkpoint's config names its
phase, so --resume RUN continues the phase the run was in: unfinished pre-training, then the switch,
or the fine-tuning.

Usage:
    python train_darkir_fivek_transfer.py --pretrain-data /path/to/fivek --data /path/to/pairs
    python train_darkir_fivek_transfer.py --pretrain-data /path/to/fivek --data /path/to/pairs \
        --steps 60000 --pretrain-steps 40000 --finetune-lr 1e-4 --pretrained DarkIR_384.pt
    python train_darkir_fivek_transfer.py                 # built-in demo data (for both phases)
    python train_darkir_fivek_transfer.py --pretrain-data /path/to/fivek --data DATA \
        --resume runs/train_darkir_fivek_transfer
CPU smoke test (seconds):
    python train_darkir_fivek_transfer.py --pretrain-data DATA --steps 4 --pretrain-steps 2 --crop 32 \
        --batch-size 2 --width 8 --enc-blocks 1 1 1 --dec-blocks 1 1 1 --middle-blocks-enc 1 \
        --middle-blocks-dec 1 --finetune-lr 1e-3 --finetune-warmup 1 --val-every 2 --out /tmp/smoke
"""
import argparse


from data.build import build_datasets
from data.loaders import val_loader
from data.pairs import TARGET_ALIASES
from losses import CombinedLoss, L1Loss, WindowAwareLoss
from losses.side_output import SideOutputLoss
from losses.window import WINDOW_SOFTNESS, WINDOW_THRESHOLD
from models.darkir import DarkIR
from utils.checkpoint import CheckpointError, load_checkpoint, model_spec
from utils.cli import add_darkir_args, base_parser, darkir_kwargs, parse_args, run_cli
from utils.run import Run, prepare_model, setup
from utils.training import TrainingState, autocast, make_train_step

PHASES = ("pretrain", "finetune")
# FiveK's expert retouches export as expertA ... expertE; expert C is the usual reference.
FIVEK_TARGET_ALIASES = TARGET_ALIASES + ("expertc", "expert_c")
# DarkIR's official optimizer settings (cidautai/DarkIR options/train/*.yml) for pre-training.
RECIPE = dict(lr=5e-4, weight_decay=1e-3, grad_clip=0.0)
# No --data and no GPU: a width-16 DarkIR on small crops, both phases in minutes on 2 cores.
DEMO_BUDGET = dict(steps=400, pretrain_steps=200, crop=96, batch_size=4, width=16, lr=1e-3, warmup=20,
                   finetune_lr=5e-4, finetune_warmup=20, val_every=100, save_every=100, log_every=10,
                   workers=2, ema=0.99)


def train_phase(phase, args, model, train_model, criterion, side_criterion, device, run_dir, resume_path=None):
    """Run one phase (steps 0..--pretrain-steps on --pretrain-data at --lr, or --pretrain-steps..--steps
    on --data at --finetune-lr) from its start or from ``resume_path``; the same loop for both phases.
    ``train_model`` is ``model`` or its torch.compile wrapper. Returns the network the next phase
    starts from (the EMA copy when EMA is on)."""
    pretrain = phase == "pretrain"
    start, end = (0, args.pretrain_steps) if pretrain else (args.pretrain_steps, args.steps)
    lr, warmup = (args.lr, args.warmup) if pretrain else (args.finetune_lr, args.finetune_warmup)
    data_args = (argparse.Namespace(**{**vars(args), "data": args.pretrain_data, "val_data": None})
                 if pretrain else args)

    # --- data ---------------------------------------------------------------------------------
    train_set, val_set = build_datasets(data_args, target_aliases=FIVEK_TARGET_ALIASES if pretrain else None)

    # --- optimizer (fresh for each phase) -------------------------------------------------------
    train_step = make_train_step(model, args, device, lr=lr, warmup=warmup, total_steps=end - start)
    config = {**vars(args), "phase": phase, "model": model_spec(model, darkir_kwargs(args))}
    state = TrainingState(model=model, train_step=train_step, config=config)

    # --- resume -------------------------------------------------------------------------------
    phase_args = argparse.Namespace(**{**vars(args), "steps": end})
    run = Run(phase_args, state, device, run_dir=run_dir, resume=resume_path or False,
              name=f"{args.script} ({phase})", start_step=start, summary=not pretrain)
    if state.ema is not None:
        state.ema.num_updates = run.step - start  # the EMA warm-up restarts with each phase
    batches = run.train_batches(train_set)
    if run.fresh:
        run.logger.log(start, "phase", {"phase": phase, "data": data_args.data, "lr": lr, "end_step": end})

    # --- loop ---------------------------------------------------------------------------------
    with run.training(val_loader(val_set, workers=min(args.workers, 2))):
        while run.step < end:
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
    if pretrain:  # phase 1's final and best checkpoints stay beside the fine-tuning's (safe to redo)
        state.save(run_dir / "pretrain_last.pt", run.step, extra=run.checkpoint_extra())
        best = run_dir / "best.pt"
        if best.is_file() and load_checkpoint(best)["config"]["phase"] == "pretrain":
            best.replace(run_dir / "pretrain_best.pt")
    return state.eval_model


def main(argv=None):
    # --- config -----------------------------------------------------------------------------
    parser = base_parser(__doc__, **RECIPE)
    add_darkir_args(parser)
    parser.add_argument("--pretrain-data", default=None,
                        help="pre-training pairs, e.g. FiveK as input/ + expertC/ (demo: the demo data)")
    parser.add_argument("--pretrain-steps", type=int, default=25_000,
                        help="steps of phase 1; phase 2 runs from there to --steps (the total)")
    parser.add_argument("--finetune-lr", type=float, default=1e-4, help="peak learning rate of phase 2")
    parser.add_argument("--finetune-warmup", type=int, default=200, help="warm-up steps of phase 2")
    parser.add_argument("--l1-weight", type=float, default=1.0)
    parser.add_argument("--window-weight", type=float, default=0.5)
    parser.add_argument("--window-threshold", type=float, default=WINDOW_THRESHOLD,
                        help="input luma above which a pixel counts as over-exposed (soft)")
    parser.add_argument("--window-softness", type=float, default=WINDOW_SOFTNESS)
    parser.add_argument("--side-weight", type=float, default=0.0,
                        help="L1 of DarkIR's 1/8-scale side output against the downscaled target (0: off)")
    args = parse_args(parser, argv, DEMO_BUDGET, script="train_darkir_fivek_transfer")
    if not 0 < args.pretrain_steps < args.steps:
        raise ValueError(f"--pretrain-steps {args.pretrain_steps} must be between 1 and --steps - 1 "
                         f"(--steps {args.steps} counts both phases)")
    if args.pretrain_data is None:
        if not args.demo:
            raise ValueError("--pretrain-data is required: the pre-training pairs (e.g. FiveK: input/, expertC/)")
        args.pretrain_data = args.data
        print("No --pretrain-data: the demo pre-trains on the demo data too (this shows the mechanics only).")

    # --- setup --------------------------------------------------------------------------------
    device, run_dir = setup(args)

    # --- model --------------------------------------------------------------------------------
    model = DarkIR(**darkir_kwargs(args))
    train_model = prepare_model(model, args, device, "DarkIR")

    # --- loss ---------------------------------------------------------------------------------
    criterion = CombinedLoss({
        "l1": (args.l1_weight, L1Loss()),
        "window": (args.window_weight, WindowAwareLoss(args.window_threshold, args.window_softness)),
    })
    side_criterion = SideOutputLoss()

    # --- resume: the phase the checkpoint was written in ----------------------------------------
    phase, resume_path = "pretrain", None
    if args.resume:
        resume_path = args.resume
        saved_config = load_checkpoint(resume_path).get("config", {})
        phase = saved_config.get("phase")
        if phase not in PHASES:
            raise CheckpointError(f"--resume {resume_path} was not written by train_darkir_fivek_transfer.py")
        if phase == "finetune" and saved_config["pretrain_steps"] != args.pretrain_steps:
            raise ValueError(f"--pretrain-steps {args.pretrain_steps}: the resumed run is fine-tuning after "
                             f"{saved_config['pretrain_steps']} pre-training steps; pass that value")

    # --- phase 1: pre-training, then the switch ------------------------------------------------
    if phase == "pretrain":
        pretrained = train_phase("pretrain", args, model, train_model, criterion, side_criterion, device,
                                 run_dir, resume_path)
        model.load_state_dict(pretrained.state_dict())
        resume_path = None

    # --- phase 2: fine-tuning -----------------------------------------------------------------
    train_phase("finetune", args, model, train_model, criterion, side_criterion, device, run_dir, resume_path)


if __name__ == "__main__":
    run_cli(main)
