"""Stable Diffusion + ControlNet (utils/controlnet_pipeline.py, data/latents.py, train_controlnet*.py) on a tiny random SD built here.

The tiny model differs on purpose from the library's ``--pretrained tiny-random`` (which the generic script
smoke tests use): epsilon prediction with a DDIM scheduler config, and a 4x VAE, so the conditioning
embedding must downsample by 4, not SD's 8.
"""
import json
import sys

import diffusers
import evaluate
import numpy as np
import pytest
import torch
import torch.nn.functional as F
import transformers

from data.dataset import PairedDataset
from data.latents import LatentCache, SeededSamples
from data.pairs import resolve_datasets_pairs
from utils.checkpoint import build_model, load_checkpoint
from utils.controlnet_pipeline import (SD21, SD21_BASE, ControlNetEnhancer, PromptBank, build_controlnet,
                                       build_controlnet_optimizer, diffusion_loss, load_controlnet_enhancer,
                                       load_stable_diffusion, resolve_pretrained, write_model_index)

PROMPT = "a bright room"


def write_tokenizer(folder):
    """A CLIP tokenizer from a small in-memory vocabulary (letters, word-final letters, a few merges)."""
    letters = [chr(code) for code in range(ord("a"), ord("z") + 1)]
    merged = ["ro", "roo", "room</w>", "br", "bri"]
    tokens = ["<|startoftext|>", "<|endoftext|>"] + letters + [c + "</w>" for c in letters] + merged
    folder.mkdir(parents=True)
    (folder / "vocab.json").write_text(json.dumps({token: index for index, token in enumerate(tokens)}))
    (folder / "merges.txt").write_text("#version: 0.2\nr o\nro o\nroo m</w>\nb r\nbr i\n")
    (folder / "tokenizer_config.json").write_text(json.dumps({"model_max_length": 12}))
    return len(tokens)


@pytest.fixture(scope="module")
def sd_folder(tmp_path_factory):
    """A saved tiny Stable Diffusion folder: epsilon prediction, 4x VAE (three blocks), 2-level UNet."""
    folder = tmp_path_factory.mktemp("tiny_sd")
    torch.manual_seed(0)
    vocab_size = write_tokenizer(folder / "tokenizer")
    diffusers.UNet2DConditionModel(
        sample_size=8, block_out_channels=(8, 16), layers_per_block=1, norm_num_groups=4, cross_attention_dim=16,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        attention_head_dim=(2, 4), use_linear_projection=True).save_pretrained(folder / "unet")
    diffusers.AutoencoderKL(
        block_out_channels=(8, 16, 16), layers_per_block=1, norm_num_groups=4, latent_channels=4,
        down_block_types=("DownEncoderBlock2D",) * 3, up_block_types=("UpDecoderBlock2D",) * 3,
        sample_size=32).save_pretrained(folder / "vae")
    transformers.CLIPTextModel(transformers.CLIPTextConfig(
        vocab_size=vocab_size, hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
        max_position_embeddings=12, projection_dim=16, bos_token_id=0, eos_token_id=1,
        pad_token_id=1)).save_pretrained(folder / "text_encoder")
    diffusers.DDIMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012,
                            prediction_type="epsilon").save_pretrained(folder / "scheduler")
    write_model_index(folder)
    return folder


@pytest.fixture(scope="module")
def sd(sd_folder):
    return load_stable_diffusion(str(sd_folder))


def random_photos(count, size=32, seed=0):
    return torch.rand(count, 3, size, size, generator=torch.Generator().manual_seed(seed))


def test_folder_loads_with_its_own_prediction_type_and_scale(sd, sd_folder):
    assert sd.prediction_type == "epsilon"
    assert sd.vae_scale_factor == 4 and sd.size_multiple == 8
    assert not any(p.requires_grad for module in (sd.vae, sd.text_encoder, sd.unet) for p in module.parameters())
    index = json.loads((sd_folder / "model_index.json").read_text())
    assert index["unet"] == ["diffusers", "UNet2DConditionModel"] and index["scheduler"][1] == "DDIMScheduler"
    with pytest.warns(UserWarning, match="smoke tests only"):
        tiny = load_stable_diffusion("tiny-random")
    assert tiny.prediction_type == "v_prediction" and tiny.vae_scale_factor == 2


def test_controlnet_sees_the_photo_on_the_latent_grid_and_starts_neutral(sd):
    controlnet = build_controlnet(sd)
    photos = random_photos(2)
    latents = torch.randn(2, 4, 8, 8)
    assert controlnet.controlnet_cond_embedding(photos).shape == (2, 8, 8, 8)
    text = torch.randn(2, 12, 16)
    timesteps = torch.tensor([10, 900])
    down, mid = controlnet(latents, timesteps, encoder_hidden_states=text, controlnet_cond=photos, return_dict=False)
    with torch.no_grad():
        plain = sd.unet(latents, timesteps, encoder_hidden_states=text).sample
        controlled = sd.unet(latents, timesteps, encoder_hidden_states=text, down_block_additional_residuals=down,
                             mid_block_additional_residual=mid).sample
    # zero convolutions: an untrained ControlNet leaves the UNet's prediction exactly as it was
    assert all(torch.count_nonzero(residual) == 0 for residual in [*down, mid])
    assert torch.equal(plain, controlled)


def test_prompt_embeddings_match_the_pipeline_and_per_image_prompts(sd, sd_folder, tmp_path):
    pipeline = diffusers.StableDiffusionPipeline(
        vae=sd.vae, text_encoder=sd.text_encoder, tokenizer=sd.tokenizer, unet=sd.unet,
        scheduler=diffusers.DDIMScheduler.from_config(sd.scheduler_config), safety_checker=None,
        feature_extractor=None, requires_safety_checker=False)
    expected, _ = pipeline.encode_prompt(PROMPT, "cpu", 1, False)
    prompts_file = tmp_path / "prompts.json"
    prompts_file.write_text(json.dumps({"001": "a dark room", "002": PROMPT}))
    bank = PromptBank(sd, PROMPT, prompts_file)
    assert torch.equal(bank.prompt, expected)
    batch = bank(["001", "002", "unlisted"])
    assert torch.equal(batch[1], expected[0]) and torch.equal(batch[2], expected[0])
    assert not torch.equal(batch[0], expected[0])
    prompts_file.write_text("[1, 2]")
    with pytest.raises(ValueError, match="--prompts .*JSON object"):
        PromptBank(sd, PROMPT, prompts_file)


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction", "sample"])
def test_diffusion_loss_targets_follow_the_prediction_type(sd, prediction_type, monkeypatch):
    monkeypatch.setattr(sd, "prediction_type", prediction_type)
    controlnet = build_controlnet(sd)
    latents, noise = torch.randn(2, 4, 8, 8), torch.randn(2, 4, 8, 8)
    timesteps = torch.tensor([3, 700])
    text, photos = torch.randn(2, 12, 16), random_photos(2)
    abar = sd.noise_scheduler.alphas_cumprod[timesteps].view(-1, 1, 1, 1)
    noisy = abar.sqrt() * latents + (1 - abar).sqrt() * noise
    target = {"epsilon": noise, "v_prediction": abar.sqrt() * noise - (1 - abar).sqrt() * latents,
              "sample": latents}[prediction_type]
    with torch.no_grad():
        prediction = sd.unet(noisy, timesteps, encoder_hidden_states=text).sample  # untrained ControlNet: no-op
        loss = diffusion_loss(sd, controlnet, latents, photos, text, noise, timesteps)
    torch.testing.assert_close(loss, F.mse_loss(prediction, target), rtol=1e-5, atol=1e-6)


def test_draws_depend_only_on_each_samples_seed(sd):
    mean, std = torch.randn(3, 4, 8, 8), torch.rand(3, 4, 8, 8)
    latents, noise, timesteps = sd.draw(mean, std, torch.tensor([5, 6, 5]))
    alone = sd.draw(mean[1:2], std[1:2], torch.tensor([6]))
    assert torch.equal(latents[1:2], alone[0]) and torch.equal(noise[1:2], alone[1]) and timesteps[1] == alone[2][0]
    assert torch.equal(noise[0], noise[2]) and not torch.equal(noise[0], noise[1])
    assert 0 <= timesteps.min() and timesteps.max() < sd.noise_scheduler.config.num_train_timesteps
    scale = sd.vae.config.scaling_factor
    posterior_draw = latents[0] / scale - mean[0]
    assert torch.all(posterior_draw.abs() <= 6 * std[0] + 1e-6)


def test_a_few_steps_lower_the_loss_on_a_fixed_batch(sd):
    controlnet = build_controlnet(sd)
    optimizer = build_controlnet_optimizer(controlnet, lr=1e-3, weight_decay=0.0, eight_bit=True)[0]
    assert isinstance(optimizer, torch.optim.AdamW)  # no bitsandbytes / no CUDA: the fused AdamW
    photos, edited = random_photos(2, seed=1), random_photos(2, seed=2)
    text = PromptBank(sd, PROMPT).prompt.expand(2, -1, -1)
    latents, noise, timesteps = sd.draw(*sd.encode_images(edited), torch.tensor([0, 1]))
    losses = []
    for _ in range(5):
        loss = diffusion_loss(sd, controlnet, latents, photos, text, noise, timesteps)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    assert all(later < earlier for earlier, later in zip(losses, losses[1:])), losses


def test_enhancer_renders_photos_of_any_size_reproducibly(sd):
    bank = PromptBank(sd, PROMPT)
    enhancer = ControlNetEnhancer(sd, build_controlnet(sd), bank.prompt, bank.negative, steps=2, seed=3)
    photo = random_photos(2, size=28)[..., :20]
    first, again = enhancer(photo), enhancer(photo)
    assert first.shape == photo.shape and first.dtype == torch.float32
    assert 0 <= first.min() and first.max() <= 1 and torch.equal(first, again)
    enhancer.seed = 4
    assert not torch.equal(enhancer(photo), first)
    enhancer.guidance_scale = 3.0
    assert enhancer(photo[:1]).shape == (1, 3, 28, 20)


def test_latent_cache_holds_fixed_windows_encoded_once(sd, tiny_pairs):
    pairs, _ = resolve_datasets_pairs(str(tiny_pairs), val_fraction=0.1, seed=0)
    cache = LatentCache(pairs, sd.encode_images, crop=32, windows_per_image=2, seed=0, device="cpu", batch_size=5)
    assert len(cache) == 2 * len(pairs)
    first, second = cache[0], cache[(1, 77)]
    assert first["latent_mean"].shape == (4, 8, 8) and first["input"].shape == (3, 32, 32)
    assert second["sample_seed"] == 77 and first["name"] == second["name"] == pairs[0].name
    assert not torch.equal(first["input"], second["input"])  # two different windows of one photo
    window = PairedDataset(pairs, crop=32)[(0, int(np.random.SeedSequence([0, 0, 0]).generate_state(1)[0]))]
    mean, std = sd.encode_images(window["target"][None])
    torch.testing.assert_close(first["latent_mean"], mean[0], atol=2e-3, rtol=2e-3)  # float16 storage
    torch.testing.assert_close(first["latent_std"], std[0], atol=2e-3, rtol=2e-3)
    assert (first["input"] - window["input"]).abs().max() <= 0.5 / 255 + 1e-6
    assert SeededSamples(PairedDataset(pairs, crop=32))[(2, 2 ** 64 - 1)]["sample_seed"] == 2 ** 63 - 1


def test_missing_model_is_one_line_naming_what_to_provide(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(FileNotFoundError) as error:
        resolve_pretrained("nobody/no-such-stable-diffusion")
    message = str(error.value)
    assert "\n" not in message and SD21_BASE in message and SD21 in message and "local Hugging Face cache" in message
    (tmp_path / "vae").mkdir()
    with pytest.raises(FileNotFoundError, match="missing text_encoder, tokenizer, unet, scheduler"):
        resolve_pretrained(str(tmp_path))


def test_train_script_checkpoints_the_controlnet_only_and_evaluate_runs_it(sd_folder, tiny_pairs, tmp_path):
    import train_controlnet
    out = tmp_path / "run"
    argv = ["--data", str(tiny_pairs), "--pretrained", str(sd_folder), "--steps", "2", "--crop", "32",
            "--batch-size", "2", "--grad-accum", "2", "--denoise-steps", "2", "--val-every", "2",
            "--workers", "0", "--out", str(out)]
    train_controlnet.main(argv)
    checkpoint = load_checkpoint(out / "last.pt")
    config = checkpoint["config"]
    assert config["controlnet"]["pretrained"] == str(sd_folder) and config["controlnet"]["prediction_type"] == "epsilon"
    controlnet = build_model(config["model"])
    assert set(checkpoint["model"]) == set(controlnet.state_dict())  # the ControlNet, nothing of the frozen parts
    controlnet.load_state_dict(checkpoint["model"])
    assert config["model"]["kwargs"]["conditioning_embedding_out_channels"] == (16, 32, 96)
    assert list((out / "samples").glob("*.png"))

    enhancer = load_controlnet_enhancer(checkpoint, "cpu", steps=3, seed=1)
    photo = random_photos(1, size=24)
    assert (enhancer.steps, enhancer.seed) == (3, 1) and enhancer(photo).shape == photo.shape
    # evaluate.py enhances the 48x48 validation photos in 24 px tiles and reports seconds per photo
    means = evaluate.main(["--checkpoint", str(out), "--data", str(tiny_pairs), "--denoise-steps", "2",
                           "--tile", "24", "--overlap", "8", "--device", "cpu", "--pred", str(tmp_path / "pred")])
    assert means["seconds"] > 0 and 0 < means["psnr"] < 100
    assert len(list((tmp_path / "pred").rglob("*.png"))) == 2

    train_controlnet.main(argv[:argv.index("--steps") + 1] + ["4"] + argv[argv.index("--steps") + 2:]
                          + ["--resume", str(out)])
    assert load_checkpoint(out / "last.pt")["step"] == 4
    with pytest.raises(ValueError, match="--crop 36 must be a multiple of 8"):
        train_controlnet.main(argv[:argv.index("--crop") + 1] + ["36"] + argv[argv.index("--crop") + 2:])


def test_missing_extras_name_the_requirements_file(monkeypatch):
    monkeypatch.setitem(sys.modules, "diffusers", None)  # makes `import diffusers` fail
    with pytest.raises(ImportError, match="pip install -r requirements-extras.txt"):
        load_stable_diffusion("tiny-random")
