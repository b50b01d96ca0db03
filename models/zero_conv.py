"""Restormer fine-tuned the ControlNet way: a locked pretrained Restormer plus a trainable copy of its
encoder, joined through zero-initialised 1x1 convolutions (Zhang et al. 2023, "Adding Conditional Control
to Text-to-Image Diffusion Models", the "zero convolution").

The locked model keeps its pretrained weights for good. The trainable copy (patch embedding, encoder
levels 1-3 and the latent stage, initialised from the locked ones) reads the same photo; its feature map
at each level passes through a 1x1 convolution whose weight and bias start at zero and is added to the
locked model's feature at that level -- the skip connections its decoder reads and the latent -- as
ControlNet adds its residuals to the UNet's skips and middle block. At initialisation the output is
therefore exactly the pretrained output, and training can only add a learned correction on top of it:
it starts from, and cannot forget, the pretrained model (for small datasets such as the catalog's 464
pairs). The locked encoder runs without autograd; the locked decoder passes gradients to the zero
convolutions but is never updated.
"""
import copy

import torch
from torch import nn

from .padding import pad_to_multiple
from .restormer import SIZE_MULTIPLE, Restormer

# Restormer's encoder, in order: (stage, the downsampling that feeds it or None).
ENCODER_STAGES = (("encoder_level1", None), ("encoder_level2", "down1_2"), ("encoder_level3", "down2_3"),
                  ("latent", "down3_4"))
# Channels of each encoder level, in multiples of ``dim``.
LEVEL_WIDTHS = (1, 2, 4, 8)


def _encode(model: nn.Module, patch_embed: nn.Module, image: torch.Tensor, run_stage) -> list:
    """The four encoder features (levels 1-3 and latent) of ``model``'s encoder modules on ``image``."""
    features, x = [], patch_embed(image)
    for stage, downsample in ENCODER_STAGES:
        if downsample is not None:
            x = getattr(model, downsample)(x)
        x = run_stage(getattr(model, stage), x)
        features.append(x)
    return features


class RestormerEncoder(nn.Module):
    """A trainable copy of a Restormer's encoder (patch embedding, levels 1-3, latent stage), with the
    same submodule names, so a Restormer state dict loads into it (``strict=False``)."""

    def __init__(self, restormer: Restormer):
        super().__init__()
        self.patch_embed = copy.deepcopy(restormer.patch_embed)
        for stage, downsample in ENCODER_STAGES:
            setattr(self, stage, copy.deepcopy(getattr(restormer, stage)))
            if downsample is not None:
                setattr(self, downsample, copy.deepcopy(getattr(restormer, downsample)))
        self.requires_grad_(True)

    def copy_from(self, restormer: Restormer) -> None:
        """Set every weight to ``restormer``'s (same names)."""
        source = restormer.state_dict()
        self.load_state_dict({name: source[name] for name in self.state_dict()})

    def forward(self, image: torch.Tensor, run_stage) -> list:
        return _encode(self, self.patch_embed, image, run_stage)


class ZeroConvRestormer(nn.Module):
    """Locked Restormer + trainable encoder copy joined through zero convolutions (module docstring).

    ``restormer_kwargs`` are :class:`models.restormer.Restormer`'s (``dual_pixel_task`` excepted);
    ``grad_checkpoint`` recomputes the transformer blocks of both copies in backward. The state dict
    holds both copies (``locked.*``, ``control.*``) and the zero convolutions (``zero_convs.*``).
    Input (N, inp_channels, H, W) of any H, W; output (N, out_channels, H, W).
    """

    def __init__(self, *, grad_checkpoint: bool = False, **restormer_kwargs):
        super().__init__()
        if restormer_kwargs.get("dual_pixel_task"):
            raise ValueError("ZeroConvRestormer does not support dual_pixel_task")
        self.locked = Restormer(**restormer_kwargs, grad_checkpoint=grad_checkpoint).requires_grad_(False)
        self.control = RestormerEncoder(self.locked)
        dim = restormer_kwargs.get("dim", 48)
        self.zero_convs = nn.ModuleList(nn.Conv2d(width * dim, width * dim, kernel_size=1) for width in LEVEL_WIDTHS)
        for conv in self.zero_convs:
            nn.init.zeros_(conv.weight)
            nn.init.zeros_(conv.bias)

    def load_restormer_state_dict(self, state_dict: dict) -> None:
        """Restormer weights (a state dict: ``utils.checkpoint.load_pretrained_restormer`` reads official
        ``params``/``params_ema`` files and this codebase's checkpoints, and checks the fit) into the
        locked model and its trainable copy; the zero convolutions stay zero."""
        self.locked.load_state_dict(state_dict, strict=True)
        self.control.copy_from(self.locked)

    def forward(self, inp_img: torch.Tensor) -> torch.Tensor:
        locked = self.locked
        if inp_img.dim() != 4 or inp_img.shape[1] != locked.inp_channels:
            raise ValueError(f"ZeroConvRestormer expects input of shape (N, {locked.inp_channels}, H, W), "
                             f"got {tuple(inp_img.shape)}")
        height, width = inp_img.shape[-2:]
        padded, _ = pad_to_multiple(inp_img, SIZE_MULTIPLE)
        run_stage = locked._run_stage
        with torch.no_grad():
            locked_features = _encode(locked, locked.patch_embed, padded, run_stage)
        control_features = self.control(padded, run_stage)
        enc1, enc2, enc3, latent = (feature + zero_conv(control) for feature, zero_conv, control
                                    in zip(locked_features, self.zero_convs, control_features))
        # Restormer's decoder on the corrected skips and latent.
        x = locked.reduce_chan_level3(torch.cat([locked.up4_3(latent), enc3], 1))
        x = run_stage(locked.decoder_level3, x)
        x = locked.reduce_chan_level2(torch.cat([locked.up3_2(x), enc2], 1))
        x = run_stage(locked.decoder_level2, x)
        x = run_stage(locked.decoder_level1, torch.cat([locked.up2_1(x), enc1], 1))
        x = run_stage(locked.refinement, x)
        return locked.output(x)[..., :height, :width] + inp_img[:, :locked.out_channels]
