import json
import os
import shutil
import sys

import cv2
import huggingface_hub.constants
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from transformers import DPTForDepthEstimation

from data.depth_dataset import DepthCache
from data.io import read_image
from losses.depth_maps import normalize_depth
from models.depth import DPT_DEFAULT_MEAN, DepthEstimator, tiny_dpt_config
from utils.features import load_depth_model


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory):
    """A randomly initialised tiny DPT saved the way a real downloaded model is."""
    folder = tmp_path_factory.mktemp("tiny_dpt")
    torch.manual_seed(0)
    DPTForDepthEstimation(tiny_dpt_config(image_size=32)).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def estimator(tiny_model_dir):
    return load_depth_model(tiny_model_dir, "cpu")


class CountingEstimator:
    """Wraps an estimator to count model calls."""

    def __init__(self, estimator):
        self.estimator = estimator
        self.calls = 0

    def __call__(self, rgb):
        self.calls += 1
        return self.estimator(rgb)


def write_image(path, height=40, width=52, seed=0):
    pixels = np.random.default_rng(seed).integers(0, 256, size=(height, width, 3), dtype=np.uint8)
    assert cv2.imwrite(str(path), pixels)
    return path


def test_estimator_resizes_to_config_size_and_back(estimator):
    seen_inputs, disparities = [], []
    pre_hook = estimator.model.register_forward_pre_hook(
        lambda module, args, kwargs: seen_inputs.append(kwargs["pixel_values"]), with_kwargs=True
    )
    hook = estimator.model.register_forward_hook(
        lambda module, args, output: disparities.append(output.predicted_depth)
    )
    rgb = torch.rand(2, 3, 40, 57)
    try:
        depth = estimator(rgb)
    finally:
        pre_hook.remove()
        hook.remove()
    assert [tuple(pixels.shape) for pixels in seen_inputs] == [(2, 3, 32, 32)]
    assert -1.0 <= seen_inputs[0].min() and seen_inputs[0].max() <= 1.0  # (x - 0.5) / 0.5
    # Largest disparity (nearest) becomes 0, smallest becomes 1, after resizing back.
    resized_back = F.interpolate(disparities[0][:, None], size=(40, 57), mode="bicubic", align_corners=False)
    assert torch.allclose(depth, normalize_depth(resized_back, from_disparity=True))
    assert torch.allclose(depth, 1.0 - normalize_depth(resized_back), atol=1e-6)
    assert depth.shape == (2, 1, 40, 57) and depth.dtype == torch.float32
    assert torch.isfinite(depth).all()
    assert torch.allclose(depth.amin(dim=(2, 3)), torch.zeros(2, 1))
    assert torch.allclose(depth.amax(dim=(2, 3)), torch.ones(2, 1))
    assert not estimator.model.training


def test_estimator_under_autocast(estimator):
    mixed = DepthEstimator(estimator.model, autocast_dtype=torch.bfloat16)
    depth = mixed(torch.rand(1, 3, 36, 28))
    assert depth.shape == (1, 1, 36, 28) and depth.dtype == torch.float32
    assert torch.isfinite(depth).all() and depth.min() >= 0.0 and depth.max() <= 1.0


def test_normalisation_comes_from_processor_config(tiny_model_dir, tmp_path):
    assert load_depth_model(tiny_model_dir).image_mean == DPT_DEFAULT_MEAN
    folder = tmp_path / "with_processor"
    shutil.copytree(tiny_model_dir, folder)
    imagenet_mean, imagenet_std = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
    (folder / "preprocessor_config.json").write_text(
        json.dumps({"do_normalize": True, "image_mean": imagenet_mean, "image_std": imagenet_std})
    )
    loaded = load_depth_model(folder)
    assert loaded.image_mean == tuple(imagenet_mean) and loaded.image_std == tuple(imagenet_std)


def test_model_key_follows_weights_not_location(tiny_model_dir, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(tiny_model_dir, copy)  # copy2 keeps mtimes
    original_key = load_depth_model(tiny_model_dir).model_key
    assert load_depth_model(copy).model_key == original_key
    weights = copy / "model.safetensors"
    os.utime(weights, ns=(weights.stat().st_atime_ns, weights.stat().st_mtime_ns + 10**9))
    assert load_depth_model(copy).model_key != original_key


def test_hub_id_resolves_from_local_cache_only(tiny_model_dir, tmp_path, monkeypatch):
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))
    with pytest.raises(FileNotFoundError) as missing:
        load_depth_model("Intel/dpt-hybrid-midas")
    message = str(missing.value)
    assert "'Intel/dpt-hybrid-midas'" in message and "not in the local Hugging Face cache" in message
    assert "hf download Intel/dpt-hybrid-midas --local-dir DIR" in message and "--depth-model DIR" in message
    assert "\n" not in message

    revision = "0" * 40
    repo = tmp_path / "models--Intel--dpt-hybrid-midas"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(revision)
    shutil.copytree(tiny_model_dir, repo / "snapshots" / revision)
    assert load_depth_model("Intel/dpt-hybrid-midas").image_size == (32, 32)


def test_missing_weights_error_names_the_path(tmp_path):
    missing_dir = tmp_path / "no_such_model"
    with pytest.raises(FileNotFoundError, match="no such folder") as missing:
        load_depth_model(missing_dir)
    assert str(missing_dir) in str(missing.value) and "--depth-model DIR" in str(missing.value)

    config_only = tmp_path / "config_only"
    config_only.mkdir()
    (config_only / "config.json").write_text("{}")
    with pytest.raises(FileNotFoundError, match="has no config.json and model weights"):
        load_depth_model(config_only)


def test_missing_transformers_names_the_requirements_file(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "transformers", None)  # makes `import transformers` fail
    with pytest.raises(ImportError, match=r"pip install -r requirements-extras\.txt"):
        load_depth_model(tmp_path)
    with pytest.raises(ImportError, match=r"pip install -r requirements-extras\.txt"):
        tiny_dpt_config()


def test_cache_second_call_is_a_hit_with_identical_values(estimator, tmp_path):
    image_path = write_image(tmp_path / "room.png")
    counting = CountingEstimator(estimator)
    cache = DepthCache(tmp_path / "cache", estimator.model_key, counting)
    first = cache.get_or_compute(image_path, read_image(image_path))
    second = cache.get_or_compute(image_path, read_image(image_path))
    assert counting.calls == 1 and cache.misses == 1 and cache.hits == 1
    assert first.shape == (40, 52) and first.dtype == np.float32
    assert np.array_equal(first, second)
    assert first.min() == 0.0 and first.max() == 1.0
    # A torch CHW image gives the same entry.
    third = cache.get_or_compute(image_path, torch.from_numpy(read_image(image_path)).permute(2, 0, 1))
    assert np.array_equal(third, first) and counting.calls == 1


def test_cache_invalidated_by_changed_file_or_model(estimator, tmp_path):
    image_path = write_image(tmp_path / "room.png")
    counting = CountingEstimator(estimator)
    cache = DepthCache(tmp_path / "cache", "model-a", counting)
    cache.get_or_compute(image_path, read_image(image_path))

    stat = image_path.stat()
    os.utime(image_path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))  # touched, same size
    cache.get_or_compute(image_path, read_image(image_path))
    assert counting.calls == 2

    write_image(image_path, height=24, width=30, seed=1)  # new content and size
    assert cache.get_or_compute(image_path, read_image(image_path)).shape == (24, 30)
    assert counting.calls == 3

    other_model = DepthCache(tmp_path / "cache", "model-b", counting)
    other_model.get_or_compute(image_path, read_image(image_path))
    assert counting.calls == 4 and other_model.misses == 1


def test_cache_recomputes_when_image_size_disagrees(estimator, tmp_path):
    image_path = write_image(tmp_path / "room.png")
    counting = CountingEstimator(estimator)
    cache = DepthCache(tmp_path / "cache", "model", counting)
    cache.get_or_compute(image_path, read_image(image_path))
    rotated = np.ascontiguousarray(read_image(image_path).transpose(1, 0, 2))  # loader applied a rotation
    assert cache.get_or_compute(image_path, rotated).shape == (52, 40)
    assert counting.calls == 2


def test_precompute_then_epoch_makes_no_model_call(estimator, tmp_path):
    paths = [write_image(tmp_path / f"room{index}.png", seed=index) for index in range(3)]
    counting = CountingEstimator(estimator)
    cache = DepthCache(tmp_path / "cache", estimator.model_key, counting)
    cache.precompute(paths, progress=False)
    assert counting.calls == 3 and len(list((tmp_path / "cache").glob("*.npy"))) == 3
    assert not list((tmp_path / "cache").glob("*.tmp"))

    def must_not_load(path):
        raise AssertionError(f"{path} decoded although cached")

    cache.precompute(paths, load_rgb=must_not_load, progress=False)
    for _ in range(2):  # two epochs
        for path in paths:
            cache.get_or_compute(path, read_image(path))
    assert counting.calls == 3 and cache.misses == 3 and cache.hits == 9
