"""LPIPS loss: local backbone weights only (never a download), the package's linear heads, one-line
errors, and loss behaviour."""
import argparse
import re
import sys

import pytest
import torch
from torchvision.models import alexnet, squeezenet1_1

from losses.lpips import INSTALL_HINT, LPIPSLoss, add_lpips_args, default_lpips_weights_path



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


def test_squeezenet_backbone_loads_every_tensor_from_a_torchvision_file(tmp_path):
    # its Fire modules' keys have four parts (features.3.squeeze.weight -> slice2.3.squeeze.weight)
    torch.manual_seed(0)
    path = tmp_path / "squeezenet1_1-b8a52dc0.pth"
    torch.save(squeezenet1_1(weights=None).state_dict(), path)
    loss = LPIPSLoss(weights=path, net="squeeze")
    reference = torch.load(path, weights_only=True)
    state = loss.model.net.state_dict()
    assert any(name.count(".") == 3 for name in state)
    for name, tensor in state.items():
        _, index, param = name.split(".", 2)
        assert torch.equal(tensor, reference[f"features.{index}.{param}"]), name


def test_unknown_backbone_is_rejected_naming_the_known_ones():
    with pytest.raises(ValueError, match="^LPIPS backbone must be one of alex, vgg, squeeze, got 'resnet'$"):
        LPIPSLoss(weights="random", net="resnet")


def test_missing_lpips_package_names_the_install_command(monkeypatch):
    monkeypatch.setitem(sys.modules, "lpips", None)  # import lpips now raises ImportError
    with pytest.raises(ImportError, match=re.escape(INSTALL_HINT)):
        LPIPSLoss(weights="random")


def test_missing_weights_error_says_how_to_pass_them(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"and pass --lpips-weights PATH \(or put it at that path\), "
                                                r"or --lpips-weights random for a smoke test$"):
        LPIPSLoss(weights=tmp_path / "alexnet.pth")


def test_wrong_file_error_quotes_the_first_line_of_the_cause(tmp_path):
    path = tmp_path / "other.pth"
    torch.save({"conv.weight": torch.zeros(1)}, path)
    with pytest.raises(ValueError, match=r"state_dict: Error\(s\) in loading state_dict for alexnet:$"):
        LPIPSLoss(weights=path)


def test_backbone_file_that_needs_arbitrary_unpickling_is_refused(tmp_path):
    # loaded with weights_only=True: a file holding more than tensors (any pickled object) is an error
    path = tmp_path / "alexnet-owt-7be5be79.pth"
    torch.manual_seed(0)
    torch.save({**alexnet(weights=None).state_dict(), "extra": argparse.Namespace(note="code")}, path)
    with pytest.raises(ValueError, match="not torchvision's alex state_dict"):
        LPIPSLoss(weights=path)


def test_lpips_takes_images_in_the_unit_range():
    # inputs in [0, 1], mapped to the [-1, 1] the package's networks expect
    loss = LPIPSLoss(weights="random")
    generator = torch.Generator().manual_seed(0)
    pred, target = torch.rand(1, 3, 32, 32, generator=generator), torch.rand(1, 3, 32, 32, generator=generator)
    expected = loss.model(2 * pred - 1, 2 * target - 1, normalize=False).mean()
    assert loss(pred, target).item() == pytest.approx(expected.item(), rel=1e-6)


def test_random_backbone_warns_that_the_loss_is_meaningless():
    with pytest.warns(UserWarning) as record:
        LPIPSLoss(weights="random")
    assert str(record[0].message) == ("--lpips-weights random: LPIPS's backbone is randomly initialised, so the loss "
                                      "only exercises the code (smoke tests); pass real ImageNet weights to train")


@pytest.mark.parametrize("net, file_name", [("alex", "alexnet-owt-7be5be79.pth"),
                                            ("squeeze", "squeezenet1_1-b8a52dc0.pth")])
def test_default_weights_are_read_from_torch_hubs_cache_of_the_backbone(tmp_path, monkeypatch, net, file_name):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    with pytest.raises(FileNotFoundError, match=re.escape(str(tmp_path / "checkpoints" / file_name))):
        LPIPSLoss(net=net)


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
