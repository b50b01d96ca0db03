"""Shared fixtures: tiny paired datasets written to tmp folders, CPU-only, fast."""
import os

import cv2
import numpy as np
import pytest
import torch

# At most 2 threads, or OMP_NUM_THREADS when set: tools/mutation.py sets 1, since a test process forked
# from one with a multi-threaded OpenMP pool (as mutmut forks its workers) hangs in that pool.
torch.set_num_threads(max(1, int(os.environ.get("OMP_NUM_THREADS") or min(2, os.cpu_count() or 1))))


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


class LocalConvNet(torch.nn.Module):
    """A fully convolutional test network (receptive field 7x7, so tiled inference with enough overlap
    equals whole-image inference): ``x[:, :3] + convs(x)``; ``identity=True`` zeroes the last
    convolution, making the output exactly the input."""

    def __init__(self, inp_channels: int = 3, width: int = 8, identity: bool = False):
        super().__init__()
        self.body = torch.nn.Sequential(
            torch.nn.Conv2d(inp_channels, width, 3, padding=1), torch.nn.GELU(),
            torch.nn.Conv2d(width, width, 3, padding=1), torch.nn.GELU(),
            torch.nn.Conv2d(width, 3, 3, padding=1))
        if identity:
            torch.nn.init.zeros_(self.body[-1].weight)
            torch.nn.init.zeros_(self.body[-1].bias)

    def forward(self, x):
        return x[:, :3] + self.body(x)


def save_model_checkpoint(path, model, kwargs: dict, ema_model=None, **config):
    """A checkpoint of ``model`` (config['model'] from its kwargs, plus ``config``) as a training run
    writes it; ``ema_model``'s weights go in as the EMA weights."""
    from utils.checkpoint import model_spec, save_checkpoint

    class _Weights:  # what save_checkpoint asks of an EMA: a state_dict
        def __init__(self, module):
            self.module = module

        def state_dict(self):
            return self.module.state_dict()

    save_checkpoint(path, step=7, model=model, config={"model": model_spec(model, kwargs), **config},
                    ema=_Weights(ema_model) if ema_model is not None else None)
    return path


@pytest.fixture
def tiny_restormer_checkpoint(tmp_path):
    """RUN/best.pt of a randomly initialised 0.2M-parameter Restormer (a visible, non-local edit)."""
    from models.restormer import Restormer
    torch.manual_seed(0)
    kwargs = dict(dim=8, num_blocks=[1, 1, 1, 1], num_refinement_blocks=1, heads=[1, 1, 1, 1])
    return save_model_checkpoint(tmp_path / "restormer_run" / "best.pt", Restormer(**kwargs), kwargs)


@pytest.fixture
def conv_checkpoint(tmp_path):
    """RUN/best.pt of a randomly initialised :class:`LocalConvNet` (purely local edit)."""
    torch.manual_seed(0)
    return save_model_checkpoint(tmp_path / "conv_run" / "best.pt", LocalConvNet(), {})


@pytest.fixture
def identity_checkpoint(tmp_path):
    """RUN/best.pt of a :class:`LocalConvNet` whose output is exactly its input."""
    return save_model_checkpoint(tmp_path / "identity_run" / "best.pt", LocalConvNet(identity=True),
                                 {"identity": True})


def constant(rgb, size=8):
    """A (1, 3, size, size) image of one colour."""
    return torch.tensor(rgb, dtype=torch.float32).view(1, 3, 1, 1).expand(1, 3, size, size).clone()


@pytest.fixture(scope="module")
def random_vgg():
    """(VGGPerceptualLoss, GramStyleLoss) on a random VGG19, built once per module: the code path of real weights."""
    from losses.perceptual import GramStyleLoss, VGGPerceptualLoss
    with pytest.warns(UserWarning, match="randomly initialised"):
        return VGGPerceptualLoss(vgg_weights="random"), GramStyleLoss(vgg_weights="random")
