"""Checkpoints written before the layer move of issue 10 (pipeline, depth loading and file reading moved
from models/ and data/ to utils/) still rebuild, load and enhance.

The files are written here as ``utils.checkpoint.save_checkpoint`` wrote them at commit 4d8ea7a, the
last before the move: the dict spelled out, with that commit's class paths and config keys. No class
that a checkpoint names moved module (the ControlNet's class is diffusers'), so these paths are also
today's; the test pins that they keep resolving.
"""
import random

import numpy as np
import pytest
import torch

from data.features import build_inputs
from models.restormer import Restormer
from utils.checkpoint import build_model
from utils.features import load_depth_model
from utils.inference import load_enhancer

TINY_RESTORMER = dict(dim=8, num_blocks=[1, 1, 1, 1], num_refinement_blocks=1, heads=[1, 1, 1, 1])
# config['model']['class'] of every model class the recipes saved before the move, with tiny kwargs.
CLASS_PATHS_BEFORE_THE_MOVE = {
    "models.restormer.Restormer": TINY_RESTORMER,
    "models.zero_conv.ZeroConvRestormer": TINY_RESTORMER,
    "models.gain.GainRestormer": TINY_RESTORMER,
    "models.darkir.DarkIR": dict(width=8, middle_blk_num_enc=1, middle_blk_num_dec=1,
                                 enc_blk_nums=[1, 1, 1], dec_blk_nums=[1, 1, 1]),
}


def write_checkpoint_as_before_the_move(path, model, class_path: str, kwargs: dict, **config):
    """save_checkpoint's file at 4d8ea7a: format, step, config (flags + model spec + extras), weights
    (EMA as a plain state dict), optimizer/scheduler/scaler states, the RNG states, extra."""
    state = model.state_dict()
    torch.save({
        "format": "rehdr-checkpoint-v1",
        "step": 4,
        "config": {"seed": 0, "steps": 4, "crop": 32, "model": {"class": class_path, "kwargs": dict(kwargs)},
                   **config},
        "model": state,
        "ema": {name: value.clone() for name, value in state.items()},
        "optimizer": None,
        "scheduler": None,
        "scaler": None,
        "rng": {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()},
        "extra": {"val": {"psnr": 20.0, "ssim": 0.5, "l1": 0.1}},
    }, path)
    return path


def odd_photo(height=37, width=45, seed=0):
    return np.random.default_rng(seed).random((height, width, 3), dtype=np.float32)


@pytest.mark.parametrize("class_path", sorted(CLASS_PATHS_BEFORE_THE_MOVE))
def test_class_paths_of_before_the_move_still_build(class_path):
    model = build_model({"class": class_path, "kwargs": CLASS_PATHS_BEFORE_THE_MOVE[class_path]})
    assert f"{type(model).__module__}.{type(model).__qualname__}" == class_path


def test_zero_conv_checkpoint_from_before_the_move_enhances(tmp_path):
    torch.manual_seed(0)
    model = build_model({"class": "models.zero_conv.ZeroConvRestormer", "kwargs": TINY_RESTORMER}).eval()
    with torch.no_grad():
        for conv in model.zero_convs:  # a trained model: the corrections are no longer zero
            conv.weight.normal_(std=0.1)
    path = write_checkpoint_as_before_the_move(tmp_path / "best.pt", model, "models.zero_conv.ZeroConvRestormer",
                                               TINY_RESTORMER)
    photo = odd_photo()
    output = load_enhancer(path, tile=0).enhance(photo)
    with torch.no_grad():
        expected = model(torch.from_numpy(photo).permute(2, 0, 1)[None]).clamp(0, 1)[0].permute(1, 2, 0).numpy()
    np.testing.assert_allclose(output, expected, atol=1e-6)


def test_depth_feature_checkpoint_from_before_the_move_enhances(tmp_path):
    from transformers import DPTForDepthEstimation

    from models.depth import tiny_dpt_config
    torch.manual_seed(0)
    depth_folder = tmp_path / "tiny_random_dpt"
    DPTForDepthEstimation(tiny_dpt_config()).save_pretrained(depth_folder)
    kwargs = {**TINY_RESTORMER, "inp_channels": 4}
    model = Restormer(**kwargs).eval()
    path = write_checkpoint_as_before_the_move(tmp_path / "best.pt", model, "models.restormer.Restormer", kwargs,
                                               input_features=["depth"], depth_model=str(depth_folder))
    photo = odd_photo()
    output = load_enhancer(path, tile=0).enhance(photo)
    rgb = torch.from_numpy(photo).permute(2, 0, 1)[None]
    with torch.no_grad():
        network_input = build_inputs(rgb, ["depth"], depth=load_depth_model(depth_folder)(rgb))
        expected = model(network_input).clamp(0, 1)[0].permute(1, 2, 0).numpy()
    assert output.shape == photo.shape
    np.testing.assert_allclose(output, expected, atol=1e-6)
