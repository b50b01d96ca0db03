"""LPIPS loss: local backbone weights only (never a download), the package's linear heads, one-line
errors, and loss behaviour."""
import argparse

import pytest
import torch
from torchvision.models import alexnet

from losses.lpips import LPIPSLoss, add_lpips_args, default_lpips_weights_path



def torchvision_alexnet_file(tmp_path, seed=0):
    torch.manual_seed(seed)
    path = tmp_path / "alexnet-owt-7be5be79.pth"
    torch.save(alexnet(weights=None).state_dict(), path)
    return path


def test_backbone_loads_every_tensor_from_a_torchvision_file(tmp_path):
    path = torchvision_alexnet_file(tmp_path)
    loss = LPIPSLoss(weights=path)
    reference = torch.load(path, weights_only=True)
    assert torch.equal(loss.model.net.slice1[0].weight, reference["features.0.weight"])
    assert torch.equal(getattr(loss.model.net.slice5, "10").bias, reference["features.10.bias"])
    # the linear heads come from the wheel, not random: all non-negative 1x1 weights
    heads = [loss.model.lins[i].model[-1].weight for i in range(5)]
    assert all((w >= 0).all() and w.abs().sum() > 0 for w in heads)


def test_missing_weights_name_the_file_and_the_flag(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"alexnet.pth.*--lpips-weights"):
        LPIPSLoss(weights=tmp_path / "alexnet.pth")


def test_wrong_file_is_a_one_line_error(tmp_path):
    path = tmp_path / "other.pth"
    torch.save({"conv.weight": torch.zeros(1)}, path)
    with pytest.raises(ValueError, match="not torchvision's alex state_dict"):
        LPIPSLoss(weights=path)


def test_lpips_is_zero_on_identical_images_and_grows_with_distortion(tmp_path):
    loss = LPIPSLoss(weights=torchvision_alexnet_file(tmp_path))
    image = torch.rand(2, 3, 48, 48, generator=torch.Generator().manual_seed(0))
    noise = torch.randn(image.shape, generator=torch.Generator().manual_seed(1))
    small, large = (image + 0.05 * noise).clamp(0, 1), (image + 0.3 * noise).clamp(0, 1)
    assert loss(image, image).item() == pytest.approx(0.0, abs=1e-6)
    assert 0 < loss(small, image).item() < loss(large, image).item()


def test_gradients_reach_the_prediction_only_and_survive_bf16_autocast():
    loss = LPIPSLoss(weights="random")
    pred = torch.rand(1, 3, 32, 32, requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        value = loss(pred, torch.rand(1, 3, 32, 32))
    value.backward()
    assert value.dtype == torch.float32 and torch.isfinite(pred.grad).all() and pred.grad.abs().sum() > 0
    assert not any(p.requires_grad for p in loss.parameters())
    loss.train()
    assert not loss.model.training


def test_flag_defaults_to_torchvisions_cache():
    parser = argparse.ArgumentParser()
    add_lpips_args(parser)
    assert parser.parse_args([]).lpips_weights is None
    assert parser.parse_args(["--lpips-weights", "random"]).lpips_weights == "random"


def test_default_weights_path_is_where_torch_hub_caches_alexnet(tmp_path, monkeypatch):
    # torch.hub.load_state_dict_from_url, which torchvision's weights use, saves under <hub dir>/checkpoints
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    assert default_lpips_weights_path() == tmp_path / "checkpoints" / "alexnet-owt-7be5be79.pth"
