"""LPIPS: learned perceptual image patch similarity (Zhang et al., CVPR 2018) as a loss, through the
``lpips`` package (an optional extra: ``pip install -r requirements-extras.txt``).

The package ships LPIPS's linear heads (``lpips/weights/v0.1/{alex,vgg,squeeze}.pth``) but not the
ImageNet backbone under them, which it would download through torchvision. Here the backbone is read
from a local file and never downloaded at run time:

* ``weights=None``: torchvision's cache, ``torch.hub.get_dir()/checkpoints/<file>`` (the file that
  torchvision's ``AlexNet_Weights.IMAGENET1K_V1`` / ``VGG16_Weights`` / ``SqueezeNet1_1_Weights``
  download);
* a path: that file (torchvision's state_dict of the backbone, classifier keys ignored);
* ``'random'``: a random backbone with a warning -- the loss is then meaningless, but smoke tests run
  the same code path without the file.

L = mean over the batch of LPIPS(pred, target), inputs in [0, 1]; 0 for identical images.
"""
import contextlib
import io
import warnings
from pathlib import Path

import torch
from torch import nn
from torchvision.models import AlexNet_Weights, SqueezeNet1_1_Weights, VGG16_Weights

RANDOM_WEIGHTS = "random"
BACKBONE_WEIGHTS = {"alex": AlexNet_Weights.IMAGENET1K_V1, "vgg": VGG16_Weights.IMAGENET1K_V1,
                    "squeeze": SqueezeNet1_1_Weights.IMAGENET1K_V1}
INSTALL_HINT = "LPIPS needs the lpips package: pip install -r requirements-extras.txt"


def default_lpips_weights_path(net: str = "alex") -> Path:
    """Where torchvision caches the ImageNet weights of LPIPS's backbone ``net``."""
    return Path(torch.hub.get_dir()) / "checkpoints" / Path(BACKBONE_WEIGHTS[net].url).name


def _backbone_state_dict(backbone: nn.Module, torchvision_state: dict) -> dict:
    """torchvision's ``features.<i>.*`` keys renamed to the lpips package's ``slice<k>.<i>.*``
    (each slice keeps the torchvision index of the layers it holds)."""
    renamed = {}
    for name in backbone.state_dict():
        _, index, param = name.split(".", 2)
        source = f"features.{index}.{param}"
        if source in torchvision_state:
            renamed[name] = torchvision_state[source]
    return renamed


class LPIPSLoss(nn.Module):
    """LPIPS distance as a loss (see the module docstring); frozen, eval mode, computed in fp32."""

    def __init__(self, weights=None, net: str = "alex"):
        super().__init__()
        if net not in BACKBONE_WEIGHTS:
            raise ValueError(f"LPIPS backbone must be one of {', '.join(BACKBONE_WEIGHTS)}, got {net!r}")
        try:
            import lpips
        except ImportError as error:
            raise ImportError(INSTALL_HINT) from error
        # pnet_rand builds the backbone without torchvision's download; the heads load from the wheel.
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore", UserWarning)  # torchvision's "pretrained=False" deprecation
            self.model = lpips.LPIPS(pretrained=True, net=net, pnet_rand=True, verbose=False)
        if weights == RANDOM_WEIGHTS:
            warnings.warn("--lpips-weights random: LPIPS's backbone is randomly initialised, so the loss only "
                          "exercises the code (smoke tests); pass real ImageNet weights to train", stacklevel=2)
        else:
            self._load_backbone(Path(weights) if weights is not None else default_lpips_weights_path(net), net)
        self.model.eval().requires_grad_(False)

    def _load_backbone(self, path: Path, net: str) -> None:
        if not path.is_file():
            raise FileNotFoundError(
                f"LPIPS backbone weights not found: {path}; download {BACKBONE_WEIGHTS[net].url} and pass "
                "--lpips-weights PATH (or put it at that path), or --lpips-weights random for a smoke test")
        try:
            torchvision_state = torch.load(path, map_location="cpu", weights_only=True)
            self.model.net.load_state_dict(_backbone_state_dict(self.model.net, torchvision_state))
        except Exception as error:  # unpickling errors, wrong keys or shapes
            raise ValueError(f"--lpips-weights {path} is not torchvision's {net} state_dict: "
                             f"{str(error).splitlines()[0]}") from error

    def train(self, mode: bool = True):
        # Frozen: the backbone's dropout-free eval behaviour whatever the owner's mode.
        return super().train(False)

    def forward(self, pred, target, inp=None):
        with torch.autocast(device_type=pred.device.type, enabled=False):
            return self.model(pred.float(), target.float(), normalize=True).mean()


def add_lpips_args(parser) -> None:
    """The ``--lpips-weights`` flag of scripts with an LPIPS loss."""
    parser.add_argument("--lpips-weights", default=None, metavar="PATH",
                        help="torchvision AlexNet ImageNet weights for LPIPS's backbone (alexnet-owt-7be5be79.pth); "
                        f"default: torchvision's cache ({default_lpips_weights_path()}); 'random' for smoke tests only")
