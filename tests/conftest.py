"""Shared fixtures: tiny paired datasets written to tmp folders, CPU-only, fast."""
import os

import cv2
import numpy as np
import pytest
import torch

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


def make_pair_images(rng: np.random.Generator, height: int, width: int):
    """A smooth random 'photo' and its 'edit' (a fixed global tone curve + a clipped highlight region),
    so a tiny network can learn the mapping in a few steps."""
    base = cv2.resize(rng.random((4, 4, 3)).astype(np.float32), (width, height), interpolation=cv2.INTER_CUBIC)
    target = np.clip(base, 0, 1)
    inp = np.clip(0.6 * target ** 1.5 + 0.05, 0, 1)
    inp[: height // 4, : width // 4] = 1.0  # a blown-out 'window'
    return (inp * 255).astype(np.uint8), (target * 255).astype(np.uint8)


def write_pairs(root, count: int, size=(48, 48), seed: int = 0, input_dir="input", target_dir="target"):
    rng = np.random.default_rng(seed)
    (root / input_dir).mkdir(parents=True, exist_ok=True)
    (root / target_dir).mkdir(parents=True, exist_ok=True)
    for index in range(count):
        inp, target = make_pair_images(rng, *size)
        cv2.imwrite(str(root / input_dir / f"{index:03d}.png"), inp[..., ::-1])
        cv2.imwrite(str(root / target_dir / f"{index:03d}.png"), target[..., ::-1])
    return root


@pytest.fixture
def tiny_pairs(tmp_path):
    """DATA/train/{input,target} (6 pairs) + DATA/val/{input,target} (2 pairs), 48x48 PNGs."""
    root = tmp_path / "data"
    write_pairs(root / "train", 6, seed=0)
    write_pairs(root / "val", 2, seed=1)
    return root
