"""NAFNet / NAFNetLocal (models/nafnet.py) and the stable recipe (train_nafnet_stable.py): the
official configurations' exact sizes and state_dict, strict loading of published-style files, any
input size, gradients, bf16, test-time local pooling, and the NaN that the stable recipe avoids."""
import argparse
import importlib.util
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import evaluate
from models.nafnet import LocalAvgPool2d, NAFNet, NAFNetLocal
from tests.conftest import save_model_checkpoint
from utils.checkpoint import CheckpointError, load_pretrained
from utils.training import NonFiniteLossError, autocast, make_train_step

ROOT = Path(__file__).resolve().parents[1]
SIDD_32 = dict(width=32, middle_blk_num=12, enc_blk_nums=[2, 2, 4, 8], dec_blk_nums=[2, 2, 2, 2])
GOPRO_64 = dict(width=64, middle_blk_num=1, enc_blk_nums=[1, 1, 1, 28], dec_blk_nums=[1, 1, 1, 1])
TINY = dict(width=8, middle_blk_num=1, enc_blk_nums=[1, 1], dec_blk_nums=[1, 1])


def official_shapes(width, middle_blk_num, enc_blk_nums, dec_blk_nums, img_channel=3):
    """Every state_dict key and shape of the official NAFNet_arch.NAFNet, derived from its structure
    (megvii-research/NAFNet), independently of models/nafnet.py."""
    def block(prefix, c):
        return {f"{prefix}.conv1.weight": (2 * c, c, 1, 1), f"{prefix}.conv1.bias": (2 * c,),
                f"{prefix}.conv2.weight": (2 * c, 1, 3, 3), f"{prefix}.conv2.bias": (2 * c,),
                f"{prefix}.conv3.weight": (c, c, 1, 1), f"{prefix}.conv3.bias": (c,),
                f"{prefix}.sca.1.weight": (c, c, 1, 1), f"{prefix}.sca.1.bias": (c,),
                f"{prefix}.conv4.weight": (2 * c, c, 1, 1), f"{prefix}.conv4.bias": (2 * c,),
                f"{prefix}.conv5.weight": (c, c, 1, 1), f"{prefix}.conv5.bias": (c,),
                f"{prefix}.norm1.weight": (c,), f"{prefix}.norm1.bias": (c,),
                f"{prefix}.norm2.weight": (c,), f"{prefix}.norm2.bias": (c,),
                f"{prefix}.beta": (1, c, 1, 1), f"{prefix}.gamma": (1, c, 1, 1)}
    shapes = {"intro.weight": (width, img_channel, 3, 3), "intro.bias": (width,),
              "ending.weight": (img_channel, width, 3, 3), "ending.bias": (img_channel,)}
    chan = width
    for level, num in enumerate(enc_blk_nums):
        for index in range(num):
            shapes.update(block(f"encoders.{level}.{index}", chan))
        shapes[f"downs.{level}.weight"], shapes[f"downs.{level}.bias"] = (2 * chan, chan, 2, 2), (2 * chan,)
        chan *= 2
    for index in range(middle_blk_num):
        shapes.update(block(f"middle_blks.{index}", chan))
    for level, num in enumerate(dec_blk_nums):
        shapes[f"ups.{level}.0.weight"] = (2 * chan, chan, 1, 1)
        chan //= 2
        for index in range(num):
            shapes.update(block(f"decoders.{level}.{index}", chan))
    return shapes


def randomised(model, seed=0):
    """``model`` with every parameter random (the blocks' beta/gamma start at zero, which would hide
    most of the network), eval mode."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in model.parameters():
            param.copy_(torch.randn(param.shape, generator=generator) * 0.2)
    return model.eval()


@pytest.mark.parametrize("cls, config, count", [(NAFNet, SIDD_32, 29_159_715), (NAFNet, GOPRO_64, 67_888_835),
                                                (NAFNetLocal, GOPRO_64, 67_888_835)],
                         ids=["sidd32", "gopro64", "gopro64-local"])
def test_official_configs_have_the_official_state_dict(cls, config, count):
    model = cls(**config)
    assert sum(p.numel() for p in model.parameters()) == count
    state = model.state_dict()
    assert {k: tuple(v.shape) for k, v in state.items()} == official_shapes(**config)
    assert {v.dtype for v in state.values()} == {torch.float32}
    assert not list(model.buffers())


def test_official_defaults_build_from_an_option_file_entry():
    # an official option file's network_g (minus 'type') constructs the class unchanged
    model = NAFNet(**{"img_channel": 3, "width": 16, "middle_blk_num": 1, "enc_blk_nums": [1], "dec_blk_nums": [1]})
    assert model.padder_size == 2
    assert NAFNet().padder_size == 1 and not NAFNet().encoders  # official defaults: no levels


def test_published_style_file_loads_strictly_preferring_params_ema(tmp_path):
    source, ema = randomised(NAFNet(**TINY), seed=1), randomised(NAFNet(**TINY), seed=2)
    path = tmp_path / "NAFNet-tiny.pth"
    torch.save({"params": source.state_dict(), "params_ema": ema.state_dict()}, path)
    model = NAFNet(**TINY)
    assert load_pretrained(model, path) == ([], [])
    x = torch.rand(1, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(model.eval()(x), ema(x))
    local = NAFNetLocal(**TINY, train_size=(1, 3, 16, 16))
    load_pretrained(local, path, prefer_ema=False)
    assert all(torch.equal(a, b) for a, b in zip(local.state_dict().values(), source.state_dict().values()))
    with pytest.raises(CheckpointError, match="do not fit"):
        load_pretrained(NAFNet(**{**TINY, "width": 16}), path)


@pytest.mark.parametrize("size", [(37, 53), (5, 3), (32, 32)])
def test_any_size_is_zero_padded_and_cropped_back(size):
    model = randomised(NAFNet(**TINY))
    x = torch.rand(2, 3, *size)
    with torch.no_grad():
        out = model(x)
        multiple = model.padder_size
        padded = F.pad(x, (0, (-size[1]) % multiple, 0, (-size[0]) % multiple))  # the official zero padding
        expected = model(padded)[..., :size[0], :size[1]]
    assert out.shape == x.shape
    assert torch.allclose(out, expected, atol=1e-6)


def test_fresh_network_is_the_identity_plus_the_ending_conv():
    # beta = gamma = 0 at initialisation: every block is the identity
    model = NAFNet(**TINY).eval()
    torch.nn.init.zeros_(model.ending.weight)
    torch.nn.init.zeros_(model.ending.bias)
    x = torch.rand(1, 3, 21, 30)
    with torch.no_grad():
        assert torch.equal(model(x), x)


@pytest.mark.parametrize("cls", [NAFNet, NAFNetLocal])
def test_every_parameter_gets_a_gradient(cls):
    model = randomised(cls(**TINY)).train()
    model(torch.rand(2, 3, 24, 40)).square().mean().backward()
    no_grad = [name for name, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not no_grad


def test_no_nan_under_bf16_autocast():
    model = randomised(NAFNet(**TINY)).train()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(torch.rand(2, 3, 33, 47))
    out.float().mean().backward()
    assert out.shape == (2, 3, 33, 47) and torch.isfinite(out.float()).all()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())


def test_local_pooling_is_global_up_to_the_window_and_local_beyond():
    # the window is 1.5x the training crop: up to that, NAFNetLocal equals NAFNet; beyond, it differs
    model = randomised(NAFNet(**TINY))
    local = NAFNetLocal(**TINY, train_size=(1, 3, 16, 16)).eval()
    local.load_state_dict(model.state_dict())
    small, large = torch.rand(1, 3, 24, 24), torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.allclose(local(small), model(small), atol=1e-6)
        assert not torch.allclose(local(large), model(large), atol=1e-3)
        assert local(torch.rand(1, 3, 51, 77)).shape == (1, 3, 51, 77)
    assert [block.sca[0].kernel_size for block in local.encoders[0]] == [(24, 24)]
    assert [block.sca[0].kernel_size for block in local.middle_blks] == [(6, 6)]
    assert [block.sca[0].kernel_size for block in local.decoders[1]] == [(24, 24)]


@pytest.mark.parametrize("fast_imp", [False, True])
def test_local_average_is_the_mean_of_the_window_around_each_pixel(fast_imp):
    x = torch.rand(1, 2, 20, 30, dtype=torch.float64)
    pool = LocalAvgPool2d((6, 10), fast_imp=fast_imp, max_reduction=(1, 1))
    out = pool(x)
    assert out.shape == x.shape
    # an even 6x10 window is centred with one more row/column after the pixel than before it: pixel
    # (8, 12) averages rows 6..11 and columns 8..17 (both variants agree when nothing is subsampled)
    expected = x[..., 6:12, 8:18].mean((-2, -1))
    assert torch.allclose(out[..., 8, 12], expected)
    assert torch.allclose(pool(x[..., :6, :10]), x[..., :6, :10].mean((-2, -1), keepdim=True))


def load_recipe():
    spec = importlib.util.spec_from_file_location("train_nafnet_stable", ROOT / "train_nafnet_stable.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def train_fixed_batch(amp, lr, grad_clip, betas, warmup=1, steps=30):
    """``steps`` optimizer steps of a tiny NAFNet on one fixed batch through the library's TrainStep,
    reading the non-finite guard every step; the last loss."""
    torch.manual_seed(0)
    model = NAFNet(**TINY)
    args = argparse.Namespace(lr=lr, weight_decay=0.0, warmup=warmup, steps=steps, amp=amp,
                              grad_clip=grad_clip, ema=0)
    device = torch.device("cpu")
    train_step = make_train_step(model, args, device, betas=betas)
    generator = torch.Generator().manual_seed(1)
    inp = torch.rand(2, 3, 32, 32, generator=generator)
    target = (inp * 1.3).clamp(0, 1)
    for _ in range(steps):
        with autocast(device, amp):
            pred = model(inp)
        loss = (pred.float() - target).abs().mean()
        train_step(loss)
        train_step.check()
    return loss.item()


def test_stable_recipe_avoids_the_fp16_nan_of_an_aggressive_lr():
    # lr 0.3 inflates the weights; NAFNet's gates multiply activations until fp16 overflows (inf/NaN
    # loss on consecutive steps, ~step 11). The same lr in fp32 stays finite: the range is the cause.
    recipe = load_recipe()
    with pytest.raises(NonFiniteLossError):
        train_fixed_batch("fp16", lr=0.3, grad_clip=0.0, betas=recipe.BETAS)
    assert torch.isfinite(torch.tensor(train_fixed_batch("none", lr=0.3, grad_clip=0.0, betas=recipe.BETAS)))
    stable = recipe.RECIPE
    assert stable["amp"] == "none"
    loss = train_fixed_batch(stable["amp"], lr=stable["lr"], grad_clip=stable["grad_clip"], betas=recipe.BETAS,
                             warmup=stable["warmup"])
    assert 0 < loss < 1


@pytest.mark.parametrize("amp", ["fp16", "bf16"])
def test_recipe_refuses_half_precision(amp, tiny_pairs, tmp_path):
    with pytest.raises(ValueError, match="fp32 only"):
        load_recipe().main(["--data", str(tiny_pairs), "--amp", amp, "--out", str(tmp_path / "run")])


def test_evaluate_scores_a_nafnet_checkpoint_in_tiles(tiny_pairs, tmp_path):
    # an identity NAFNet (zero ending conv) enhanced through odd-sized tiles scores the as-shot baseline
    model = NAFNet(**TINY)
    torch.nn.init.zeros_(model.ending.weight)
    torch.nn.init.zeros_(model.ending.bias)
    checkpoint = save_model_checkpoint(tmp_path / "nafnet_run" / "best.pt", model, dict(TINY))
    means = evaluate.main(["--checkpoint", str(checkpoint.parent), "--data", str(tiny_pairs),
                           "--device", "cpu", "--tile", "24", "--overlap", "8"])
    baseline = evaluate.main(["--pred", str(tiny_pairs / "val" / "input"), "--data", str(tiny_pairs),
                              "--csv", str(tmp_path / "baseline.csv")])
    for name in ("l1", "psnr", "ssim"):
        assert means[name] == pytest.approx(baseline[name], abs=1e-4)
