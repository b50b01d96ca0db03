"""VGG19 perceptual and Gram style losses (weights from a file, a clear error without them, frozen in
training) and the adversarial losses (known values, gradients into the right network)."""
import argparse
import pickle

import pytest
import torch
from torch import nn
from torchvision.models.vgg import cfgs, make_layers

from losses.adversarial import AdversarialLoss
from losses.perceptual import (VGG19_LAYER_NAMES, GramStyleLoss, VGG19Features, VGGPerceptualLoss, add_vgg_args,
                               _vgg19_layer_names, build_vgg19_features, default_vgg_weights_path, gram_matrix)


# --------------------------------------------------------------------------- VGG

def test_vgg_weights_load_from_a_file(tmp_path):
    features = make_layers(cfgs["E"])
    state_dict = {f"features.{key}": value for key, value in features.state_dict().items()}
    state_dict["classifier.6.bias"] = torch.zeros(3)  # torchvision's file also holds the classifier
    path = tmp_path / "vgg19.pth"
    torch.save(state_dict, path)
    loaded = build_vgg19_features(str(path))
    assert all(torch.equal(a, b) for a, b in zip(loaded.state_dict().values(), features.state_dict().values()))
    assert not any(p.requires_grad for p in loaded.parameters())
    perceptual = VGGPerceptualLoss(layers=("relu1_2", "relu2_2"), vgg_weights=path)
    assert len(perceptual.features.body) == VGG19_LAYER_NAMES.index("relu2_2") + 1
    bad = tmp_path / "bad.pth"
    torch.save({"weight": torch.zeros(1)}, bad)
    with pytest.raises(ValueError, match="not a torchvision VGG19 state_dict"):
        build_vgg19_features(bad)


def test_vgg_missing_weights_is_one_clear_line(tmp_path, monkeypatch):
    missing = tmp_path / "nowhere.pth"
    with pytest.raises(FileNotFoundError) as error:
        VGGPerceptualLoss(vgg_weights=str(missing))
    message = str(error.value)
    assert "\n" not in message and str(missing) in message
    assert "https://download.pytorch.org/models/vgg19-dcbb9e9d.pth" in message and "--vgg-weights" in message
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    with pytest.raises(FileNotFoundError, match=str(tmp_path / "hub" / "checkpoints" / "vgg19-dcbb9e9d.pth")):
        GramStyleLoss()
    with pytest.raises(ValueError, match="unknown VGG19 layers"):
        VGG19Features(layers=("relu9_9",), vgg_weights="random")


def test_vgg_flag():
    import argparse
    parser = argparse.ArgumentParser()
    add_vgg_args(parser)
    assert parser.parse_args([]).vgg_weights is None
    assert parser.parse_args(["--vgg-weights", "random"]).vgg_weights == "random"


def test_vgg_losses_known_values(random_vgg):
    perceptual, style = random_vgg
    image = torch.rand(2, 3, 32, 32)
    assert perceptual(image, image).item() == 0.0 and style(image, image).item() == 0.0
    assert perceptual(image.flip(-1), image).item() > 0
    # Gram matrices ignore where features are: a mirrored image has (almost) the same style, a flat one not
    assert style(image.flip(-1), image).item() < 0.1 * style(torch.full_like(image, 0.5), image).item()
    assert gram_matrix(torch.ones(1, 2, 2, 2)).flatten().tolist() == pytest.approx([0.5] * 4)


def test_vgg_stays_frozen_in_train_mode(random_vgg):
    perceptual, _ = random_vgg
    perceptual.train()
    assert not perceptual.features.training
    pred = torch.rand(1, 3, 32, 32, requires_grad=True)
    perceptual(pred, torch.rand(1, 3, 32, 32)).backward()
    assert pred.grad.abs().sum() > 0
    assert all(p.grad is None for p in perceptual.parameters())


# --------------------------------------------------------------------------- adversarial

class ConstantCritic(nn.Module):
    """A 'discriminator' whose logits are k times the mean of its input's image half."""

    def __init__(self, k: float):
        super().__init__()
        self.k = nn.Parameter(torch.tensor(k))

    def forward(self, x):
        return self.k * x[:, 3:].mean(dim=1, keepdim=True)


def test_random_vgg_warns_that_its_losses_are_meaningless():
    with pytest.warns(UserWarning) as record:
        build_vgg19_features("random")
    assert str(record[0].message) == (
        "--vgg-weights random: VGG19 is randomly initialised, so its perceptual/style losses only exercise the "
        "code (smoke tests); pass real ImageNet weights to train")


def test_vgg_missing_weights_error_says_how_to_pass_them(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"and pass --vgg-weights PATH \(or put it at that path\), "
                                                r"or --vgg-weights random for a smoke test$"):
        build_vgg19_features(tmp_path / "vgg19.pth")


def test_wrong_vgg_file_error_quotes_the_first_line_of_the_cause(tmp_path):
    path = tmp_path / "bad.pth"
    torch.save({"weight": torch.zeros(1)}, path)
    with pytest.raises(ValueError, match=r"state_dict: Error\(s\) in loading state_dict for Sequential:$"):
        build_vgg19_features(path)


def test_vgg_file_that_needs_arbitrary_unpickling_is_refused(tmp_path):
    # loaded with weights_only=True: a file holding more than tensors (any pickled object) is refused
    state_dict = {f"features.{key}": value for key, value in make_layers(cfgs["E"]).state_dict().items()}
    path = tmp_path / "vgg19.pth"
    torch.save({**state_dict, "extra": argparse.Namespace(note="code")}, path)
    with pytest.raises(pickle.UnpicklingError, match="Weights only load failed"):
        build_vgg19_features(path)


def test_unknown_or_no_vgg_layers_are_rejected_naming_them():
    with pytest.raises(ValueError, match=r"^unknown VGG19 layers \['relu9_9'\]; choose from \['conv1_1', "):
        VGG19Features(layers=("relu9_9", "conv1_1"), vgg_weights="random")
    with pytest.raises(ValueError, match=r"^unknown VGG19 layers \[\]; choose from"):
        VGG19Features(layers=(), vgg_weights="random")


def test_vgg_features_normalise_the_image_and_return_conv_outputs_before_their_relu():
    with pytest.warns(UserWarning, match="randomly initialised"):
        features = VGG19Features(layers=("conv1_1", "relu1_1"), vgg_weights="random")
    image = torch.rand(1, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    conv, relu = features(image)
    normalised = (image - torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)) / torch.tensor(
        [0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    first = features.body[0]
    assert torch.allclose(conv, nn.functional.conv2d(normalised, first.weight, first.bias, padding=1), atol=1e-5)
    assert (conv < 0).any() and torch.equal(relu, conv.clamp_min(0.0))
    # the normalisation constants are not state: a checkpoint holds only the network's weights
    assert not {"mean", "std"} & set(features.state_dict())


@pytest.mark.parametrize("loss_class", [VGGPerceptualLoss, GramStyleLoss])
def test_vgg_loss_layer_weights_default_to_their_mean_and_need_one_per_layer(loss_class):
    layers = ("relu1_1", "relu1_2")
    with pytest.warns(UserWarning, match="randomly initialised"):
        assert loss_class(layers=layers, vgg_weights="random").layer_weights == [0.5, 0.5]
        assert loss_class(layers=layers, vgg_weights="random", layer_weights=(2, 3)).layer_weights == [2.0, 3.0]
    with pytest.raises(ValueError, match=r"^layer_weights needs one weight per layer \(2\), got 1$"), \
            pytest.warns(UserWarning, match="randomly initialised"):
        loss_class(layers=layers, vgg_weights="random", layer_weights=(1.0,))


def test_adversarial_losses_known_values():
    inp, image = torch.rand(1, 3, 4, 4), torch.ones(1, 3, 4, 4)
    hinge = AdversarialLoss(ConstantCritic(0.5), "hinge")
    assert hinge(image, image, inp).item() == pytest.approx(-0.5)
    assert hinge.discriminator_loss(image, image, inp).item() == pytest.approx(0.5 + 1.5)
    lsgan = AdversarialLoss(ConstantCritic(0.5), "lsgan")
    assert lsgan(image, image, inp).item() == pytest.approx(0.25)
    assert lsgan.discriminator_loss(image, image, inp).item() == pytest.approx(0.5 * (0.25 + 0.25))
    with pytest.raises(ValueError, match="hinge"):
        AdversarialLoss(ConstantCritic(1.0), "wgan")


def test_adversarial_gradients_go_to_the_right_network():
    loss = AdversarialLoss(ConstantCritic(0.5), "hinge")
    pred = torch.rand(1, 3, 4, 4, requires_grad=True)
    loss(pred, pred, torch.rand(1, 3, 4, 4)).backward()
    assert pred.grad is not None and loss.discriminator.k.grad is None and loss.discriminator.k.requires_grad
    pred.grad = None
    loss.discriminator_loss(pred, torch.rand(1, 3, 4, 4), torch.rand(1, 3, 4, 4)).backward()
    assert pred.grad is None and loss.discriminator.k.grad is not None


def test_adversarial_loss_is_hinge_by_default():
    inp, image = torch.rand(1, 3, 4, 4), torch.ones(1, 3, 4, 4)
    default = AdversarialLoss(ConstantCritic(0.5))
    assert default.discriminator_loss(image, image, inp).item() == pytest.approx(0.5 + 1.5)


def test_default_vgg_weights_path_is_where_torch_hub_caches_vgg19(tmp_path, monkeypatch):
    # torch.hub.load_state_dict_from_url, which torchvision's weights use, saves under <hub dir>/checkpoints
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    assert default_vgg_weights_path() == tmp_path / "checkpoints" / "vgg19-dcbb9e9d.pth"


def test_vgg19_layer_names_and_their_builder_follow_the_paper_numbering_of_torchvision_features():
    expected = []
    for block, convolutions in enumerate((2, 2, 4, 4, 4), start=1):
        for index in range(1, convolutions + 1):
            expected += [f"conv{block}_{index}", f"relu{block}_{index}"]
        expected.append(f"pool{block}")
    assert VGG19_LAYER_NAMES == expected and len(expected) == len(make_layers(cfgs["E"]))
    # VGG19_LAYER_NAMES is built at import; the builder called here is what mutation testing sees
    assert _vgg19_layer_names() == expected
