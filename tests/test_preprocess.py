"""The preprocessing pipeline: each step, spec parsing and its errors, and train/inference identity."""
import json

import cv2
import numpy as np
import pytest

from data.dataset import PairedDataset
from data.io import read_image
from data.pairs import ImagePair
from data.pixel_cache import PixelCache
from data.preprocess import (apply_pipeline, apply_pipeline_pair, denoise, gray_world, parse_pipeline,
                             preprocessed, resize_max_side)


def flat(rgb, height=24, width=32):
    return np.broadcast_to(np.asarray(rgb, dtype=np.float32), (height, width, 3)).copy()


def noisy_flat(seed=0, sigma=0.01):
    rng = np.random.default_rng(seed)
    return np.clip(flat([0.5, 0.4, 0.3]) + rng.normal(0, sigma, (24, 32, 3)).astype(np.float32), 0, 1)


# --------------------------------------------------------------------------- steps

def test_gray_world_equalises_channel_means():
    cast = flat([0.6, 0.4, 0.2])
    balanced = gray_world(cast)
    assert balanced.reshape(-1, 3).mean(0).tolist() == pytest.approx([0.4, 0.4, 0.4], abs=1e-5)
    assert np.array_equal(gray_world(cast, strength=0.0), cast)
    half = gray_world(cast, strength=0.5)  # gains 1 + 0.5 (g - 1): 5/6, 1, 3/2
    assert half[0, 0].tolist() == pytest.approx([0.5, 0.4, 0.3], abs=1e-6)


def test_gray_world_clamps_its_gains():
    red_wall = flat([0.8, 0.1, 0.1])  # gains 0.42, 3.3, 3.3 -> clamped to [0.5, 2]
    assert gray_world(red_wall, max_gain=2.0)[0, 0].tolist() == pytest.approx([0.4, 0.2, 0.2], abs=1e-6)
    assert gray_world(flat([1.0, 1.0, 0.9])).max() <= 1.0


@pytest.mark.parametrize("method", ["nlmeans", "bilateral"])
def test_denoise_lowers_noise_and_keeps_colour(method):
    noisy = noisy_flat()
    clean = denoise(noisy, method=method)
    assert clean.dtype == np.float32 and clean.shape == noisy.shape
    assert clean.std(axis=(0, 1)).max() < 0.6 * noisy.std(axis=(0, 1)).min()
    assert clean.mean(axis=(0, 1)).tolist() == pytest.approx(noisy.mean(axis=(0, 1)).tolist(), abs=0.01)


def test_nlmeans_keeps_16_bit_precision():
    # 0.2001 is no 8-bit level; a flat image has nothing to denoise, so it must come back within
    # 16-bit precision (OpenCV's colour denoiser would move it by up to two 8-bit levels).
    image = flat([0.2001, 0.5003, 0.7002])
    assert np.abs(denoise(image, method="nlmeans") - image).max() < 1 / 65535


def test_resize_downscales_the_longer_side_only():
    image = noisy_flat()  # 24 x 32
    assert resize_max_side(image, 16).shape == (12, 16, 3)
    assert resize_max_side(image, 64) is image  # never upscales
    assert resize_max_side(image, 16).mean() == pytest.approx(image.mean(), abs=1e-3)


# --------------------------------------------------------------------------- parsing

def test_parse_fills_defaults_and_round_trips_through_json():
    steps = parse_pipeline("grayworld, denoise:method=bilateral, resize:max_side=16")
    assert steps == [{"name": "grayworld", "strength": 1.0, "max_gain": 2.0},
                     {"name": "denoise", "method": "bilateral", "strength": 10.0},
                     {"name": "resize", "max_side": 16}]
    assert parse_pipeline("denoise") == [{"name": "denoise", "method": "bilateral", "strength": 10.0}]
    assert parse_pipeline("denoise:method=nlmeans")[0]["strength"] == 3.0
    assert parse_pipeline("") == parse_pipeline("none") == []
    stored = json.loads(json.dumps(steps))  # as config.json keeps it
    image = noisy_flat()
    assert np.array_equal(apply_pipeline(stored, image), apply_pipeline("grayworld,denoise:method=bilateral,"
                                                                        "resize:max_side=16", image))
    assert np.array_equal(apply_pipeline([], image), image)


@pytest.mark.parametrize("spec, message", [
    ("sharpen", "unknown step 'sharpen'; accepted: grayworld, denoise, resize"),
    ("resize", "step 'resize' needs max_side="),
    ("denoise:method=median", "denoise:method=median is invalid: must be one of bilateral, nlmeans"),
    ("grayworld:strength=2", r"grayworld:strength=2 is invalid: must be in \[0.0, 1.0\]"),
    ("grayworld:gain=1", "step 'grayworld' has no parameter 'gain'; accepted: strength, max_gain"),
    ("grayworld:strength", "expected key=value in 'grayworld:strength'"),
    ("resize:max_side=big", "resize:max_side=big is invalid"),
])
def test_parse_errors_name_the_flag_and_what_is_accepted(spec, message):
    with pytest.raises(ValueError, match=message) as error:
        parse_pipeline(spec)
    assert str(error.value).startswith("--preprocess: ")


def test_apply_validates_stored_steps():
    with pytest.raises(ValueError, match="unknown step 'blur'"):
        apply_pipeline([{"name": "blur"}], noisy_flat())


# --------------------------------------------------------------------------- train / inference identity

def write_pair(folder, name="000.png"):
    rng = np.random.default_rng(0)
    inp = np.clip(cv2.resize(rng.random((4, 4, 3)), (40, 30)) * [1.0, 0.8, 0.5] + rng.normal(0, 0.02, (30, 40, 3)),
                  0, 1)
    target = cv2.resize(rng.random((4, 4, 3)), (40, 30))
    paths = []
    for kind, image in (("input", inp), ("target", target)):
        (folder / kind).mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(folder / kind / name), (image[..., ::-1] * 65535).astype(np.uint16))
        paths.append(folder / kind / name)
    return ImagePair(input=paths[0], target=paths[1], name="000")


@pytest.mark.parametrize("cached", [False, True])
def test_dataset_input_equals_the_inference_preprocessing(tmp_path, cached):
    pair = write_pair(tmp_path)
    spec = "grayworld,denoise:method=nlmeans,resize:max_side=20"
    cache = PixelCache(tmp_path / "pixels") if cached else None
    dataset = preprocessed(PairedDataset([pair], cache=cache), parse_pipeline(spec))
    for _ in range(2):  # the second read comes from the pixel cache when enabled
        sample = dataset[0]
        photo = apply_pipeline(spec, read_image(pair.input))  # what enhance.py feeds the model
        assert np.array_equal(sample["input"].numpy().transpose(1, 2, 0), photo)
        # the target keeps the editor's colours: only the geometric step (resize) touches it
        expected_target = resize_max_side(read_image(pair.target), 20)
        assert np.array_equal(sample["target"].numpy().transpose(1, 2, 0), expected_target)
    assert photo.shape == (15, 20, 3)


def test_preprocessed_dataset_keeps_crop_and_augmentation(tmp_path):
    pair = write_pair(tmp_path)
    base = PairedDataset([pair], crop=8, augment=True)
    dataset = preprocessed(base, parse_pipeline("grayworld"))
    sample, reference = dataset[(0, 123)], base[(0, 123)]
    assert sample["input"].shape == (3, 8, 8)
    assert np.array_equal(sample["target"].numpy(), reference["target"].numpy())  # same window and flip
    assert not np.array_equal(sample["input"].numpy(), reference["input"].numpy())


def test_pair_inputs_match_single_image_pipeline():
    inp, target = noisy_flat(1), noisy_flat(2)
    steps = parse_pipeline("grayworld,denoise:method=bilateral")
    processed_inp, processed_target = apply_pipeline_pair(steps, inp, target)
    assert np.array_equal(processed_inp, apply_pipeline(steps, inp))
    assert np.array_equal(processed_target, target)
