"""Depth-aware Restormer, 4 input channels: RGB + monocular depth from a MiDaS (DPT) model.

CATALOG.md "Depth-Aware Window Recovery" (Category 1, experimental): depth as a 4th input channel,
to help the network tell windows (far, bright) from interior surfaces. Depth is computed once per
training image on the full image and cached on disk; random crops and flips apply to RGB and depth
together (data/depth_dataset.py). Loss: delta-aware weighted L1 (losses/delta.py). The checkpoint
records the feature spec and the depth model, so enhance.py builds the same input.

Usage:
    hf download Intel/dpt-hybrid-midas --local-dir midas                     # once, with internet
    python train_depth_aware.py --data /path/to/pairs --depth-model midas    # the real recipe
    python train_depth_aware.py --depth-model midas                          # built-in demo data
    python train_depth_aware.py --data DATA --depth-model midas --pretrained restormer_rgb.pth
    python train_depth_aware.py --data DATA --depth-model midas --resume runs/train_depth_aware
CPU smoke test (seconds; tiny-random: a random tiny DPT whose depth is noise):
    python train_depth_aware.py --depth-model tiny-random --steps 4 --crop 32 --batch-size 2 --dim 8 \
        --num-blocks 1 1 1 1 --num-refinement-blocks 1 --heads 1 1 1 1 --val-every 2 --out /tmp/smoke
"""
from functools import partial


from data.features import FEATURE_SPECS, num_input_channels
from data.loaders import val_loader
from losses import CombinedLoss
from losses.delta import add_delta_args, delta_loss_from_args
from models.restormer import Restormer
from utils.checkpoint import load_pretrained_expanding, model_spec
from utils.cli import add_restormer_args, base_parser, parse_args, restormer_kwargs, run_cli
from utils.features import add_feature_args, build_feature_datasets, model_inputs_for
from utils.run import Run, prepare_model, setup
from utils.training import TrainingState, autocast, make_train_step

INPUT_FEATURES = FEATURE_SPECS["depth_aware"]  # ('depth',) after RGB

# No --data and no GPU: a small Restormer on small crops, so the demo finishes in ~10 min on 2 cores.
DEMO_BUDGET = dict(steps=400, crop=96, batch_size=4, dim=16, num_blocks=[1, 2, 2, 2],
                   num_refinement_blocks=1, heads=[1, 2, 4, 8], lr=1e-3, warmup=20, grad_clip=0.0,
                   val_every=100, save_every=100, log_every=10, workers=2, ema=0.99)


def main(argv=None):
    # --- config -----------------------------------------------------------------------------
    parser = base_parser(__doc__)
    add_restormer_args(parser)
    add_feature_args(parser, depth=True)
    add_delta_args(parser)  # --fix-weight, --preserve-weight, --delta-threshold, --delta-softness
    args = parse_args(parser, argv, DEMO_BUDGET, script="train_depth_aware")

    # --- setup --------------------------------------------------------------------------------
    device, run_dir = setup(args)

    # --- data (depth: computed once per image, cached, cropped with the RGB) -----------------
    train_set, val_set, depth_model = build_feature_datasets(args, INPUT_FEATURES, device, run_dir)
    model_inputs = model_inputs_for(INPUT_FEATURES, device)

    # --- model --------------------------------------------------------------------------------
    model_kwargs = restormer_kwargs(args, inp_channels=num_input_channels(INPUT_FEATURES))
    model = Restormer(**model_kwargs, grad_checkpoint=args.grad_checkpoint)
    train_model = prepare_model(model, args, device, f"Restormer ({model_kwargs['inp_channels']} input channels)",
                                load_weights=partial(load_pretrained_expanding,
                                                     zero_init_extra_channels=args.zero_init_extra_channels))

    # --- loss ---------------------------------------------------------------------------------
    criterion = CombinedLoss({
        "delta": (1.0, delta_loss_from_args(args)),
    })

    # --- optimizer: AdamW + cosine warm-up, EMA, fp16 loss scaling, clipping, non-finite guard ----
    train_step = make_train_step(model, args, device)
    config = {**vars(args), "model": model_spec(model, model_kwargs),
              "input_features": list(INPUT_FEATURES), "depth_model": depth_model}
    state = TrainingState(model=model, train_step=train_step, config=config)

    # --- resume -------------------------------------------------------------------------------
    run = Run(args, state, device, model_inputs=model_inputs)
    batches = run.train_batches(train_set)

    # --- loop ---------------------------------------------------------------------------------
    with run.training(val_loader(val_set, workers=min(args.workers, 2))):
        while run.step < args.steps:
            batch = next(batches)
            inp = model_inputs(batch)  # RGB + depth, on the device
            target = batch["target"].to(device, non_blocking=True)
            with autocast(device, args.amp):
                pred = train_model(inp)
            losses = criterion(pred.float(), target, inp[:, :3])
            train_step(losses["loss"])
            # --- validation / checkpoint: logged, validated and saved at their intervals ----------
            run.end_step(losses)
    return run


if __name__ == "__main__":
    run_cli(main)
