"""The multi-feature / depth-aware scripts' library: depth data path, model inputs, channel expansion,
and their checkpoints through enhance.py. (Their smoke runs are in test_scripts.py.)"""
import argparse
import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch

import enhance
from data.build import build_datasets
from data.depth_dataset import DepthCache, DepthPairedDataset, with_precomputed_depth
from data.features import FEATURE_SPECS, build_inputs, luminance
from data.io import read_image
from data.loaders import train_batches, val_loader
from models.expand import INPUT_CONV_KEY, expand_input_channels, expand_to_model
from models.restormer import Restormer
from utils.checkpoint import CheckpointError, build_model, load_checkpoint, load_pretrained, load_pretrained_expanding
from utils.features import (TINY_RANDOM_FOLDER, build_feature_datasets, load_depth_model, model_inputs_for,
                            resolve_depth_model)
from utils.inference import NetworkModel, load_enhancer

ROOT = Path(__file__).resolve().parents[1]
TINY_RESTORMER = dict(dim=8, num_blocks=[1, 1, 1, 1], num_refinement_blocks=1, heads=[1, 1, 1, 1])
TINY_FLAGS = ["--steps", "2", "--crop", "32", "--batch-size", "2", "--dim", "8", "--num-blocks", "1", "1", "1", "1",
              "--num-refinement-blocks", "1", "--heads", "1", "1", "1", "1", "--val-every", "2", "--workers", "0"]


def load_script(name):
    spec = importlib.util.spec_from_file_location(name, ROOT / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def data_args(data, **overrides):
    """The shared data flags build_datasets / build_feature_datasets read."""
    values = dict(data=str(data), val_data=None, val_fraction=0.1, seed=0, crop=32, val_crop=0, cache=False,
                  depth_model="tiny-random", depth_cache=None, amp="none")
    return argparse.Namespace(**{**values, **overrides})


class CountingEstimator:
    """A stand-in depth model: the image's luma (pointwise, so any crop or flip of it is checkable)."""

    def __init__(self):
        self.calls = 0

    def __call__(self, rgb):
        self.calls += 1
        return luminance(rgb)


def test_depth_is_cropped_and_flipped_with_the_rgb(tiny_pairs, tmp_path):
    train_set, val_set = build_datasets(data_args(tiny_pairs, crop=40))
    estimator = CountingEstimator()
    train_set, _ = with_precomputed_depth(train_set, val_set, DepthCache(tmp_path, "luma", estimator), progress=False)
    # A crop larger than the 48x48 images: both are reflect-padded first.
    padded = DepthPairedDataset(train_set.pairs, train_set.depth_cache, crop=(56, 60), augment=True)
    for dataset in (train_set, padded):
        for seed in range(16):  # covers all 8 flips / rotations
            sample = dataset[(seed % len(dataset), seed)]
            assert sample["input"].shape[0] == 3 and sample["depth"].shape == (1, *sample["input"].shape[1:])
            expected = luminance(sample["input"][None])[0].half().float()  # the cache stores float16
            assert torch.allclose(sample["depth"], expected, atol=1e-3)


def test_depth_computed_once_per_image_then_only_read(tiny_pairs, tmp_path):
    train_set, val_set = build_datasets(data_args(tiny_pairs))
    estimator = CountingEstimator()
    cache = DepthCache(tmp_path / "cache", "luma", estimator)
    depth_train, depth_val = with_precomputed_depth(train_set, val_set, cache, progress=False)
    assert estimator.calls == len(train_set) + len(val_set) == 8

    batches = train_batches(depth_train, batch_size=2, seed=0, workers=0)
    for _ in range(2 * len(depth_train) // 2):  # two epochs
        assert next(batches)["depth"].shape == (2, 1, 32, 32)
    list(val_loader(depth_val, workers=0))
    assert estimator.calls == 8
    assert depth_train.depth_cache.hits == 2 * 6 + 2 and depth_train.depth_cache.misses == 0

    again = CountingEstimator()  # a second run on the same data and cache
    with_precomputed_depth(train_set, val_set, DepthCache(tmp_path / "cache", "luma", again), progress=False)
    assert again.calls == 0

    for entry in (tmp_path / "cache").glob("*.npy"):
        entry.unlink()
    with pytest.raises(RuntimeError, match="missing from the depth cache"):
        depth_train[0]


@pytest.mark.parametrize("name", ["midas_depth", "multi_feature", "depth_aware"])
def test_training_and_enhance_build_the_same_input(name, tiny_pairs, tmp_path):
    spec = FEATURE_SPECS[name]
    run_dir = tmp_path / "run"
    _, val_set, depth_model = build_feature_datasets(data_args(tiny_pairs), spec, "cpu", run_dir)
    model_inputs = model_inputs_for(spec, "cpu")
    config = {"input_features": list(spec), "depth_model": depth_model}
    inference = NetworkModel(Restormer(inp_channels=3 + len(spec), **TINY_RESTORMER), config, "test", "cpu")
    for batch, pair in zip(val_loader(val_set, workers=0), val_set.pairs):
        trained_on = model_inputs(batch)
        enhanced_with = inference.network_input(read_image(pair.input), {})
        assert trained_on.shape == enhanced_with.shape == (1, 3 + len(spec), 48, 48)
        depth_channels = [3 + index for index, feature in enumerate(spec) if feature == "depth"]
        other_channels = [channel for channel in range(trained_on.shape[1]) if channel not in depth_channels]
        assert torch.equal(trained_on[:, other_channels], enhanced_with[:, other_channels])
        # Training reads depth back from the float16 cache; enhance.py computes it in float32.
        assert torch.allclose(trained_on[:, depth_channels], enhanced_with[:, depth_channels], atol=1e-3)
        if depth_channels:
            assert trained_on[:, depth_channels].std() > 0.05  # a real depth map, not a constant


def test_validation_crop_matches_the_whole_photo_input(tiny_pairs, tmp_path):
    spec = FEATURE_SPECS["midas_depth"]
    _, val_set, _ = build_feature_datasets(data_args(tiny_pairs, val_crop=32), spec, "cpu", tmp_path / "run")
    _, whole_set, _ = build_feature_datasets(data_args(tiny_pairs), spec, "cpu", tmp_path / "run")
    model_inputs = model_inputs_for(spec, "cpu")
    cropped = model_inputs(next(iter(val_loader(val_set, workers=0))))
    whole = model_inputs(next(iter(val_loader(whole_set, workers=0))))
    window = whole[..., 8:40, 8:40]
    rgb_depth_saturation = [0, 1, 2, 3, 5]
    assert torch.equal(cropped[:, rgb_depth_saturation], window[:, rgb_depth_saturation])
    assert torch.equal(cropped[:, 4, 1:-1, 1:-1], window[:, 4, 1:-1, 1:-1])  # edges differ on the crop border
    assert torch.equal(cropped, build_inputs(cropped[:, :3], spec, depth=cropped[:, 3:4]))


def test_tiny_random_depth_model_is_saved_once_and_leaves_the_rng_alone(tmp_path):
    torch.manual_seed(1)
    expected_draw = torch.rand(3)
    torch.manual_seed(1)
    folder = Path(resolve_depth_model("tiny-random", tmp_path))
    assert torch.equal(torch.rand(3), expected_draw)
    assert folder == (tmp_path / TINY_RANDOM_FOLDER).resolve() and (folder / "config.json").is_file()
    weights_mtime = (folder / "model.safetensors").stat().st_mtime_ns
    assert resolve_depth_model("tiny-random", tmp_path) == str(folder)
    assert (folder / "model.safetensors").stat().st_mtime_ns == weights_mtime  # a resumed run keeps it
    assert load_depth_model(folder).model_key  # loads through the path real weights take
    assert resolve_depth_model(str(folder), tmp_path / "elsewhere") == str(folder)
    assert resolve_depth_model("Intel/dpt-hybrid-midas", tmp_path) == "Intel/dpt-hybrid-midas"


def tiny_rgb_state_dict(seed=0):
    torch.manual_seed(seed)
    model = Restormer(**TINY_RESTORMER)
    for parameter in model.parameters():  # random everywhere, not only where the default init is random
        torch.nn.init.normal_(parameter, std=0.1)
    return model


@pytest.mark.parametrize("channels", [4, 6])
def test_zero_init_expansion_reproduces_the_rgb_model_exactly(channels, tmp_path):
    rgb_model = tiny_rgb_state_dict().eval()
    torch.save({"params": rgb_model.state_dict()}, tmp_path / "rgb.pth")
    expanded = Restormer(inp_channels=channels, **TINY_RESTORMER).eval()
    load_pretrained_expanding(expanded, tmp_path / "rgb.pth")
    rgb = torch.rand(2, 3, 40, 40)
    features = torch.rand(2, channels - 3, 40, 40)
    with torch.no_grad():
        assert torch.equal(expanded(torch.cat([rgb, features], 1)), rgb_model(rgb))
    weight = expanded.state_dict()[INPUT_CONV_KEY]
    assert weight.shape[1] == channels and torch.equal(weight[:, 3:], torch.zeros_like(weight[:, 3:]))


def test_random_init_of_extra_channels_keeps_the_rgb_weights(tmp_path):
    rgb_model = tiny_rgb_state_dict()
    torch.save({"params": rgb_model.state_dict()}, tmp_path / "rgb.pth")
    expanded = Restormer(inp_channels=6, **TINY_RESTORMER)
    fresh_extra = expanded.state_dict()[INPUT_CONV_KEY][:, 3:].clone()
    load_pretrained_expanding(expanded, tmp_path / "rgb.pth", zero_init_extra_channels=False)
    weight = expanded.state_dict()[INPUT_CONV_KEY]
    assert torch.equal(weight[:, :3], rgb_model.state_dict()[INPUT_CONV_KEY])
    assert torch.equal(weight[:, 3:], fresh_extra) and fresh_extra.abs().sum() > 0


def test_expansion_errors(tmp_path):
    state_dict = tiny_rgb_state_dict().state_dict()
    with pytest.raises(ValueError, match="from 3 to 2 input channels"):
        expand_input_channels(state_dict, 2)
    with pytest.raises(ValueError, match="the weights have no 'stem.weight'"):
        expand_input_channels(state_dict, 6, key="stem.weight")
    with pytest.raises(ValueError, match=r"extra_weights must have shape \(8, 3, 3, 3\)"):
        expand_input_channels(state_dict, 6, extra_weights=torch.zeros(8, 1, 3, 3))
    other_width = Restormer(inp_channels=6, **{**TINY_RESTORMER, "dim": 16})
    torch.save(state_dict, tmp_path / "rgb.pth")
    with pytest.raises(CheckpointError, match=r"--pretrained .*rgb\.pth: .*shape mismatch"):
        load_pretrained_expanding(other_width, tmp_path / "rgb.pth")


def test_expanding_to_the_same_width_returns_the_weights_unchanged():
    state_dict = tiny_rgb_state_dict().state_dict()
    same = expand_input_channels(state_dict, 3)
    assert same is not state_dict and torch.equal(same[INPUT_CONV_KEY], state_dict[INPUT_CONV_KEY])


def test_extra_weights_take_the_dtype_of_the_pretrained_weight():
    state_dict = tiny_rgb_state_dict().state_dict()
    extra = torch.rand(8, 2, 3, 3, dtype=torch.float64)
    weight = expand_input_channels(state_dict, 5, extra_weights=extra)[INPUT_CONV_KEY]
    assert weight.dtype == torch.float32 and weight.shape == (8, 5, 3, 3)
    assert torch.equal(weight[:, :3], state_dict[INPUT_CONV_KEY]) and torch.equal(weight[:, 3:], extra.float())


def test_expand_to_model_zero_fills_by_default():
    state_dict = tiny_rgb_state_dict().state_dict()
    weight = expand_to_model(Restormer(inp_channels=6, **TINY_RESTORMER), state_dict)[INPUT_CONV_KEY]
    assert weight.shape == (8, 6, 3, 3) and not weight[:, 3:].any()
    assert torch.equal(weight[:, :3], state_dict[INPUT_CONV_KEY])


def test_expand_to_model_leaves_weights_it_cannot_widen_for_strict_loading():
    state_dict = tiny_rgb_state_dict().state_dict()
    model = Restormer(inp_channels=6, **TINY_RESTORMER)
    without_key = {k: v for k, v in state_dict.items() if k != INPUT_CONV_KEY}
    assert expand_to_model(model, without_key) is without_key
    assert expand_to_model(model, state_dict, key="stem.weight") is state_dict  # the model has no such weight
    flat = {**state_dict, INPUT_CONV_KEY: torch.rand(8, 3)}  # a linear layer's weight under the conv's name
    assert expand_to_model(model, flat) is flat
    assert expand_to_model(Restormer(**TINY_RESTORMER), state_dict) is state_dict  # already fits


def test_expand_to_model_counts_input_channels_not_kernel_size():
    torch.manual_seed(0)
    pretrained = torch.nn.Sequential(torch.nn.Conv2d(2, 4, 1)).state_dict()
    model = torch.nn.Sequential(torch.nn.Conv2d(5, 4, 1))
    fresh = model.state_dict()["0.weight"].clone()
    weight = expand_to_model(model, pretrained, zero_init_extra_channels=False, key="0.weight")["0.weight"]
    assert weight.shape == (4, 5, 1, 1)
    assert torch.equal(weight[:, :2], pretrained["0.weight"]) and torch.equal(weight[:, 2:], fresh[:, 2:])


def test_pretrained_flag_starts_a_script_from_the_rgb_weights(tiny_pairs, tmp_path):
    rgb_model = tiny_rgb_state_dict()
    torch.save({"params": rgb_model.state_dict()}, tmp_path / "rgb.pth")
    script = load_script("train_multi_feature")
    # lr 0: the saved weights are the initial ones.
    script.main(TINY_FLAGS + ["--data", str(tiny_pairs), "--out", str(tmp_path / "run"), "--ema", "0", "--lr", "0",
                              "--pretrained", str(tmp_path / "rgb.pth")])
    saved = load_checkpoint(tmp_path / "run" / "last.pt")["model"]
    for key, value in rgb_model.state_dict().items():
        if key == INPUT_CONV_KEY:
            assert torch.equal(saved[key][:, :3], value) and not saved[key][:, 3:].any()
        else:
            assert torch.equal(saved[key], value), key


def test_depth_scripts_need_a_depth_model(tiny_pairs, tmp_path, capsys):
    script = load_script("train_depth_aware")
    with pytest.raises(SystemExit):
        script.main(TINY_FLAGS + ["--data", str(tiny_pairs), "--out", str(tmp_path / "run")])
    assert "--depth-model" in capsys.readouterr().err
    with pytest.raises(FileNotFoundError, match=r"depth model '.*no_such_midas'.*--depth-model DIR"):
        script.main(TINY_FLAGS + ["--data", str(tiny_pairs), "--out", str(tmp_path / "run"),
                                  "--depth-model", str(tmp_path / "no_such_midas")])


@pytest.mark.parametrize("name", ["midas_depth", "multi_feature"])
def test_enhance_a_photo_with_a_six_channel_checkpoint(name, tiny_pairs, tmp_path):
    run_dir = tmp_path / "run"
    depth_flags = ["--depth-model", "tiny-random"] if name == "midas_depth" else []
    load_script(f"train_{name}").main(TINY_FLAGS + depth_flags + ["--data", str(tiny_pairs), "--out", str(run_dir)])
    checkpoint = load_checkpoint(run_dir / "best.pt")
    config = checkpoint["config"]
    assert config["input_features"] == list(FEATURE_SPECS[name])
    assert config["model"]["kwargs"]["inp_channels"] == 6
    photo = tiny_pairs / "val" / "input" / "000.png"

    enhance.main(["--checkpoint", str(run_dir), "--input", str(photo), "--out", str(tmp_path / "out"),
                  "--tile", "0", "--device", "cpu"])
    written = read_image(tmp_path / "out" / "000.png")
    assert written.shape == (48, 48, 3)

    # The same numbers by hand: the EMA weights on build_inputs of the whole photo.
    model = build_model(config["model"]).eval()
    load_pretrained(model, checkpoint, prefer_ema=True)
    rgb = torch.from_numpy(read_image(photo)).permute(2, 0, 1)[None]
    depth = load_depth_model(config["depth_model"])(rgb) if name == "midas_depth" else None
    with torch.no_grad():
        expected = model(build_inputs(rgb, config["input_features"], depth=depth)).clamp(0, 1)
    enhanced = load_enhancer(run_dir, tile=0).enhance(read_image(photo))
    assert np.allclose(enhanced, expected[0].permute(1, 2, 0).numpy(), atol=1e-6)
    assert np.abs(written - enhanced).max() <= 0.5 / 255 + 1e-6
