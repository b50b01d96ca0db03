"""VGG19 feature losses: perceptual (feature L1, Johnson et al. 2016) and Gram-matrix style (Gatys et al. 2016).

Both run one frozen torchvision VGG19 feature extractor (:func:`build_vgg19_features`). Its ImageNet
weights are read from a local file and never downloaded at run time:

* ``vgg_weights=None``: torchvision's cache, ``torch.hub.get_dir()/checkpoints/vgg19-dcbb9e9d.pth`` (the
  file ``torchvision.models.VGG19_Weights.IMAGENET1K_V1`` downloads);
* a path: that file (torchvision's full VGG19 state_dict, or just its ``features``);
* ``'random'``: random initialisation with a warning -- the loss is then meaningless, but smoke tests
  run the same code path without the 548 MB file.
"""
import warnings
from pathlib import Path

import torch
from torch import nn
from torchvision.models import VGG19_Weights
from torchvision.models.vgg import cfgs, make_layers

VGG_LAYERS = ("relu1_2", "relu2_2", "relu3_3", "relu4_3")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
RANDOM_WEIGHTS = "random"


def _vgg19_layer_names() -> list:
    """Names of the modules of VGG19 ``features`` in order: conv1_1, relu1_1, ..., pool5."""
    names, block, index = [], 1, 1
    for entry in cfgs["E"]:
        if entry == "M":
            names.append(f"pool{block}")
            block, index = block + 1, 1
        else:
            names += [f"conv{block}_{index}", f"relu{block}_{index}"]
            index += 1
    return names


VGG19_LAYER_NAMES = _vgg19_layer_names()


def default_vgg_weights_path() -> Path:
    """Where torchvision caches the ImageNet VGG19 weights."""
    return Path(torch.hub.get_dir()) / "checkpoints" / Path(VGG19_Weights.IMAGENET1K_V1.url).name


def build_vgg19_features(vgg_weights=None) -> nn.Sequential:
    """torchvision's VGG19 ``features`` (convolutions only), frozen and in eval mode.

    ``vgg_weights``: None (torchvision's cache), a file path, or ``'random'`` (see the module docstring).
    Raises FileNotFoundError naming the missing file and how to get it.
    """
    # Only the convolutional part: torchvision's vgg19() would also build and initialise a
    # 120M-parameter classifier that a feature loss never runs.
    features = make_layers(cfgs["E"], batch_norm=False)
    if vgg_weights == RANDOM_WEIGHTS:
        warnings.warn("--vgg-weights random: VGG19 is randomly initialised, so its perceptual/style losses "
                      "only exercise the code (smoke tests); pass real ImageNet weights to train", stacklevel=2)
    else:
        path = Path(vgg_weights) if vgg_weights is not None else default_vgg_weights_path()
        if not path.is_file():
            raise FileNotFoundError(
                f"VGG19 weights not found: {path}; download {VGG19_Weights.IMAGENET1K_V1.url} and pass "
                "--vgg-weights PATH (or put it at that path), or --vgg-weights random for a smoke test")
        state_dict = torch.load(path, map_location="cpu", weights_only=True)
        # torchvision's file holds the whole classifier too; only the convolutional part is used.
        prefix = "features."
        if any(key.startswith(prefix) for key in state_dict):
            state_dict = {key[len(prefix):]: value for key, value in state_dict.items() if key.startswith(prefix)}
        try:
            features.load_state_dict(state_dict)
        except RuntimeError as error:
            raise ValueError(f"--vgg-weights {path} is not a torchvision VGG19 state_dict: "
                             f"{str(error).splitlines()[0]}") from error
    return features.eval().requires_grad_(False)


class VGG19Features(nn.Module):
    """The named VGG19 activations of an image in [0, 1] (ImageNet normalisation inside).

    Only the layers up to the deepest requested one are kept and run. ``forward`` returns a list of
    feature maps in the order of ``layers``.
    """

    def __init__(self, layers=VGG_LAYERS, vgg_weights=None):
        super().__init__()
        unknown = [name for name in layers if name not in VGG19_LAYER_NAMES]
        if unknown or not layers:
            raise ValueError(f"unknown VGG19 layers {unknown or list(layers)}; choose from {VGG19_LAYER_NAMES}")
        self.layers = tuple(layers)
        indices = [VGG19_LAYER_NAMES.index(name) for name in self.layers]
        self.body = build_vgg19_features(vgg_weights)[:max(indices) + 1]
        for module in self.body:
            if isinstance(module, nn.ReLU):
                module.inplace = False  # an in-place ReLU would overwrite a requested conv output
        self.output_indices = indices
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    def train(self, mode: bool = True):
        # Frozen: stays in eval mode whatever the parent module is switched to.
        return super().train(False)

    def forward(self, image: torch.Tensor) -> list:
        x = (image.float() - self.mean) / self.std
        found = {}
        for index, module in enumerate(self.body):
            x = module(x)
            if index in self.output_indices:
                found[index] = x
        return [found[index] for index in self.output_indices]


def _layer_weights(layers, layer_weights) -> list:
    if layer_weights is None:
        return [1.0 / len(layers)] * len(layers)
    if len(layer_weights) != len(layers):
        raise ValueError(f"layer_weights needs one weight per layer ({len(layers)}), got {len(layer_weights)}")
    return [float(weight) for weight in layer_weights]


class VGGPerceptualLoss(nn.Module):
    """L = sum_l w_l mean |phi_l(pred) - phi_l(target)|, phi_l = VGG19 activation at layer l.

    Default weights w_l = 1 / (number of layers). The target's features are computed without a graph.
    """

    def __init__(self, layers=VGG_LAYERS, layer_weights=None, vgg_weights=None):
        super().__init__()
        self.features = VGG19Features(layers, vgg_weights)
        self.layer_weights = _layer_weights(layers, layer_weights)

    def forward(self, pred, target, inp=None):
        with torch.no_grad():
            target_features = self.features(target)
        loss = 0.0
        for weight, pred_feature, target_feature in zip(self.layer_weights, self.features(pred), target_features):
            loss = loss + weight * (pred_feature.float() - target_feature.float()).abs().mean()
        return loss


def gram_matrix(features: torch.Tensor) -> torch.Tensor:
    """G = F F^T / (C H W) for features F reshaped to (N, C, H W); (N, C, C), computed in fp32."""
    batch, channels, height, width = features.shape
    flat = features.float().reshape(batch, channels, height * width)
    # bmm is an autocast op: keep it in fp32, where a sum over H*W products cannot overflow.
    with torch.autocast(device_type=features.device.type, enabled=False):
        return torch.bmm(flat, flat.transpose(1, 2)) / (channels * height * width)


class GramStyleLoss(nn.Module):
    """L = sum_l w_l mean |G(phi_l(pred)) - G(phi_l(target))|, G = :func:`gram_matrix`.

    Gram matrices hold the feature co-activations, independent of where they occur: matching them
    asks for the target's textures and colour statistics rather than a per-pixel average.
    Default weights w_l = 1 / (number of layers).
    """

    def __init__(self, layers=VGG_LAYERS, vgg_weights=None, layer_weights=None):
        super().__init__()
        self.features = VGG19Features(layers, vgg_weights)
        self.layer_weights = _layer_weights(layers, layer_weights)

    def forward(self, pred, target, inp=None):
        with torch.no_grad():
            target_grams = [gram_matrix(feature) for feature in self.features(target)]
        loss = 0.0
        for weight, pred_feature, target_gram in zip(self.layer_weights, self.features(pred), target_grams):
            loss = loss + weight * (gram_matrix(pred_feature) - target_gram).abs().mean()
        return loss


def add_vgg_args(parser) -> None:
    """The ``--vgg-weights`` flag of scripts with a VGG loss."""
    parser.add_argument("--vgg-weights", default=None, metavar="PATH",
                        help="torchvision VGG19 ImageNet weights (vgg19-dcbb9e9d.pth); default: torchvision's "
                        f"cache ({default_vgg_weights_path()}); 'random' for smoke tests only")
