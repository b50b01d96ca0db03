"""Inference from trained checkpoints: rebuild the model(s) a run saved and enhance full-resolution photos.

    enhancer = load_enhancer("runs/train_restormer_512_combined_loss/best.pt", device="cuda", amp="bf16")
    enhanced = enhancer.enhance(read_image("photo.jpg"))     # HxWx3 float32 in [0, 1], same size

Every checkpoint carries its run's config, and the config says how to rebuild the network and its
input. Per photo and per checkpoint, each stage only when the config names it:

1. ``config['preprocess']``: :func:`data.preprocess.apply_pipeline` on the photo (input only, as in
   training). A geometric step (``resize``) makes the network run at the reduced size; its edit
   (output minus the reduced input) is then upsampled and added to the full-size photo, so the
   result keeps the photo's size and detail.
2. ``config['input_features']``: :func:`data.features.build_inputs` on the whole photo; a ``'depth'``
   feature comes from the MiDaS/DPT model at ``config['depth_model']``, run once per photo on the
   whole photo (never per tile). RGB and features are then tiled together.
3. The network over overlapping, blended tiles (:func:`utils.tiling.tiled_forward`), EMA weights
   when the checkpoint has them, output clamped to [0, 1]. The executor of the tiles is PyTorch
   (:class:`NetworkModel`) or, for an export.py ``model.onnx``, onnxruntime (:class:`OnnxModel`);
   stages 1-3 are the same code for both. An export's ``model.safetensors`` + ``config.json`` loads
   as a checkpoint (:func:`utils.checkpoint.load_exported`).

Several checkpoints form an ensemble (e.g. the folds of a cross-validation run): the mean of their
outputs. Which kind of model a checkpoint holds is decided by :data:`MODEL_KINDS`, a list of
(config key, loader) pairs checked in order, so another kind (a diffusion pipeline, say) plugs in
with one entry and one loader class that has the same ``predict`` method.
"""
import argparse
import hashlib
import json
import math
import os
import re
from pathlib import Path

import cv2
import numpy as np
import torch

from data.io import read_metadata, write_image

from .checkpoint import (EXPORT_CONFIG_NAME, EXPORT_FORMAT, EXPORT_WEIGHTS_NAME, CheckpointError, add_trust_flag,
                         build_model, extract_state_dict, load_checkpoint, load_exported, load_pretrained,
                         model_spec, read_export_config, set_trust_checkpoints)
from .tiling import tiled_forward
from .training import autocast, configure_backend, resolve_amp, select_device

AMP_MODES = ("none", "bf16", "fp16")
# Defaults of enhance.py / evaluate.py / report.py, chosen by measurement (tools/bench_enhance.py;
# README "Enhance, evaluate, compare"): 512 is the training crop of every catalog recipe, so
# Restormer's channel attention sees the statistics it was trained on. That is quality over CPU speed:
# on 2 CPU cores 256-px tiles enhance a 7 MP photo in 1008 s (1.6 GiB) against 1311 s (2.8 GiB).
# Any overlap removes the seams of hard tile borders (Restormer Base: max error 92/255 -> 23/255);
# beyond 32 the agreement with whole-image output does not improve, while the work grows
# as (tile / (tile - overlap))^2: 1.14x at 32, 1.31x at 64.
DEFAULT_TILE = 512
DEFAULT_OVERLAP = 32
DEFAULT_BATCH_SIZE = 4
# Tiles are cut at multiples of the networks' 2**3 downsampling, so no tile needs padding inside; a
# window-attention network (HAT: its window, DAT: its largest window side) names a larger multiple
# as its ``size_multiple``, which the tiles then follow.
TILE_MULTIPLE = 8
# The key of an export.py ONNX file's metadata that holds its config.json.
ONNX_CONFIG_KEY = "rehdr_config"
ONNX_NAME = "model.onnx"


def resolve_checkpoints(paths) -> list:
    """The checkpoint files that ``paths`` (one path or a list) name, in order.

    A file (``.pt``, an export's ``model.safetensors`` or ``model.onnx``) is itself; a run folder gives
    its ``best.pt`` (else ``last.pt``), an export folder its ``model.safetensors`` (else ``model.onnx``);
    a folder of cross-validation runs gives every ``fold_*/best.pt`` (else that fold's ``last.pt``).
    Raises :class:`utils.checkpoint.CheckpointError` naming a path that holds none of these.
    """
    paths = [paths] if isinstance(paths, (str, Path)) else list(paths)
    if not paths:
        raise CheckpointError("no checkpoint given")
    files = []
    for path in map(Path, paths):
        if path.is_file():
            files.append(path)
        elif path.is_dir():
            folds = sorted(fold for fold in path.glob("fold_*") if fold.is_dir())
            runs = folds if not _run_checkpoint(path) and folds else [path]
            for run in runs:
                checkpoint = _run_checkpoint(run)
                if checkpoint is None:
                    raise CheckpointError(f"checkpoint folder {run} has neither best.pt nor last.pt "
                                          f"(nor an export's {EXPORT_WEIGHTS_NAME} or {ONNX_NAME})")
                files.append(checkpoint)
        else:
            raise CheckpointError(f"checkpoint not found: {path} (give a .pt file, a run folder with best.pt/"
                                  "last.pt, or a folder of fold_*/ runs)")
    return files


def _run_checkpoint(run_dir: Path):
    for name in ("best.pt", "last.pt", EXPORT_WEIGHTS_NAME, ONNX_NAME):
        if (run_dir / name).is_file():
            return run_dir / name
    return None


def _autocast_dtype(amp: str):
    return {"none": None, "bf16": torch.bfloat16, "fp16": torch.float16}[amp]


class Tiling:
    """How a network sweeps a photo: ``tile`` pixels square (0: the whole photo at once), ``overlap``
    pixels shared by neighbouring tiles, ``batch_size`` tiles per forward pass."""

    def __init__(self, tile: int = DEFAULT_TILE, overlap: int = DEFAULT_OVERLAP,
                 batch_size: int = DEFAULT_BATCH_SIZE):
        if tile < 0 or tile % TILE_MULTIPLE or batch_size < 1:
            raise ValueError(f"--tile must be 0 or a positive multiple of {TILE_MULTIPLE}, and --batch-size >= 1; "
                             f"got {tile} and {batch_size}")
        if tile > 0 and not 0 <= overlap < tile // 2:
            raise ValueError(f"--overlap {overlap} must be in [0, tile/2) for --tile {tile}")
        self.tile, self.overlap, self.batch_size = tile, overlap, batch_size


class NetworkModel:
    """One image-to-image network of the library (``config['model']``) with the input pipeline it
    was trained with; :meth:`predict` maps a photo to its enhanced version on ``device``."""

    def __init__(self, model: torch.nn.Module, config: dict, source: str, device, amp: str = "none",
                 tiling: Tiling = None, used_ema: bool = False, step: int = None):
        if amp not in AMP_MODES:
            raise ValueError(f"--amp must be one of {', '.join(AMP_MODES)}, got {amp!r}")
        self.model = model.to(device).eval()
        self.forward = self.model  # the compiled module after compile()
        self._set_pipeline(config, source, device, amp, tiling, used_ema, step,
                           math.lcm(TILE_MULTIPLE, getattr(model, "size_multiple", 1)), type(model).__name__)

    def _set_pipeline(self, config: dict, source: str, device, amp: str, tiling: Tiling, used_ema: bool,
                      step: int, size_multiple: int, name: str) -> None:
        self.config, self.source, self.amp, self.used_ema, self.step = config, source, amp, used_ema, step
        self.device = torch.device(device)
        self.tiling = tiling or Tiling()
        self.size_multiple = size_multiple
        if self.tiling.tile % self.size_multiple:
            raise ValueError(f"--tile {self.tiling.tile} must be a multiple of {self.size_multiple} for "
                             f"{name} (its attention windows)")
        self.preprocess = config.get("preprocess") or []
        self.features = config.get("input_features")
        self.depth_model = config.get("depth_model")
        self._depth_estimator = None

    @classmethod
    def from_checkpoint(cls, checkpoint: dict, source: str, device, amp: str, tiling: Tiling,
                        sampling: dict = None) -> "NetworkModel":
        """Rebuild the network from ``checkpoint['config']['model']`` and load its (EMA) weights
        (``sampling`` is for diffusion models; a network is deterministic)."""
        model = build_model(checkpoint["config"]["model"])
        load_pretrained(model, checkpoint, strict=True, prefer_ema=True)
        used_ema = (isinstance(checkpoint.get("ema"), dict) or isinstance(checkpoint.get("params_ema"), dict)
                    or (checkpoint.get("format") == EXPORT_FORMAT and checkpoint["config"].get("weights") == "ema"))
        return cls(model, checkpoint["config"], source, device, amp, tiling, used_ema, checkpoint.get("step"))

    @property
    def num_parameters(self) -> int:
        return sum(parameter.numel() for parameter in self.model.parameters())

    def compile(self) -> None:
        """Run the network through ``torch.compile`` (the first tile of each shape compiles)."""
        self.forward = torch.compile(self.model)

    def describe(self) -> str:
        steps = f", step {self.step}" if self.step is not None else ""
        weights = "EMA weights" if self.used_ema else "weights"
        name = type(self.model).__name__
        return f"{name} ({self.num_parameters:,} parameters, {weights}{steps}) from {self.source}"

    def depth(self, rgb: torch.Tensor, photo_cache: dict) -> torch.Tensor:
        """Depth (1, 1, H, W) of the whole photo from ``config['depth_model']``, computed once per photo
        (``photo_cache`` shares it between the members of an ensemble) and per loaded model."""
        key = ("depth", str(self.depth_model), repr(self.preprocess))
        if key not in photo_cache:
            if self.depth_model is None:
                raise CheckpointError(f"{self.source}: input feature 'depth' needs config['depth_model'] "
                                      "(the MiDaS/DPT folder the run was trained with)")
            if self._depth_estimator is None:
                from .features import load_depth_model
                self._depth_estimator = load_depth_model(self.depth_model, self.device,
                                                         autocast_dtype=_autocast_dtype(self.amp))
            photo_cache[key] = self._depth_estimator(rgb)
        return photo_cache[key]

    def network_input(self, rgb: np.ndarray, photo_cache: dict) -> torch.Tensor:
        """(1, C, h, w) input on the device: the preprocessed photo, then the feature channels."""
        if self.preprocess:
            from data.preprocess import apply_pipeline
            rgb = apply_pipeline(self.preprocess, rgb)
        tensor = torch.from_numpy(np.ascontiguousarray(rgb)).permute(2, 0, 1)[None].to(self.device)
        if not self.features:
            return tensor
        from data.features import build_inputs, needs_depth
        depth = self.depth(tensor, photo_cache) if needs_depth(self.features) else None
        return build_inputs(tensor, self.features, depth=depth)

    def run_tiles(self, tiles: torch.Tensor) -> torch.Tensor:
        """The executor: (N, C, h, w) padded tiles on the device -> (N, 3, h, w) float32 in [0, 1]."""
        with autocast(self.device, self.amp):
            return self.forward(tiles).float().clamp(0, 1)

    @torch.no_grad()
    def predict(self, rgb: np.ndarray, photo_cache: dict = None) -> torch.Tensor:
        """Enhance an HxWx3 float32 photo in [0, 1]; returns (1, 3, H, W) float32 in [0, 1] on the device."""
        inputs = self.network_input(rgb, {} if photo_cache is None else photo_cache)
        output = tiled_forward(self.run_tiles, inputs, tile=self.tiling.tile, overlap=self.tiling.overlap,
                               batch_size=self.tiling.batch_size, device=self.device, multiple=self.size_multiple)
        if output.shape[-2:] != rgb.shape[:2]:
            output = _apply_edit_at_full_size(rgb, output)
        return output


def _apply_edit_at_full_size(rgb: np.ndarray, reduced_output: torch.Tensor) -> torch.Tensor:
    """The full-size photo plus the network's edit made at a reduced size (a ``resize`` preprocessing
    step): ``clamp(photo + upsample(output - downsample(photo)), 0, 1)``. Downsampling is area
    interpolation, as in the resize step; it is taken from the original photo (not the preprocessed
    input) so that the photometric preprocessing is part of the edit too."""
    height, width = rgb.shape[:2]
    reduced_height, reduced_width = reduced_output.shape[-2:]
    reduced_photo = cv2.resize(rgb, (reduced_width, reduced_height), interpolation=cv2.INTER_AREA)
    edit = reduced_output[0].permute(1, 2, 0).cpu().numpy() - reduced_photo
    full_edit = cv2.resize(edit, (width, height), interpolation=cv2.INTER_LINEAR)
    result = np.clip(rgb + full_edit, 0.0, 1.0)
    return torch.from_numpy(result).permute(2, 0, 1)[None].to(reduced_output.device)


class OnnxModel(NetworkModel):
    """An export.py ``model.onnx`` run by onnxruntime (CUDA provider when the device is CUDA and the
    provider is installed, else CPU), with the same input pipeline, tiling and blending as
    :class:`NetworkModel`: only :meth:`run_tiles`, the executor, differs. The graph is fp32 (--amp does
    not apply) and does not pad, so tiles are padded to the export's ``size_multiple``."""

    def __init__(self, path, device, tiling: Tiling = None):
        try:
            import onnxruntime
        except ImportError as error:
            raise ImportError("running a .onnx model needs onnxruntime: pip install -r requirements-extras.txt") from error
        device = torch.device(device)
        providers = ["CPUExecutionProvider"]
        if device.type == "cuda" and "CUDAExecutionProvider" in onnxruntime.get_available_providers():
            providers.insert(0, ("CUDAExecutionProvider", {"device_id": device.index or 0}))
        try:
            self.session = onnxruntime.InferenceSession(str(path), providers=providers)
        except Exception as error:  # onnxruntime raises its own types for unreadable or invalid graphs
            raise CheckpointError(f"cannot read ONNX model {path}: {type(error).__name__}: "
                                  f"{str(error).strip().splitlines()[0]}") from error
        metadata = self.session.get_modelmeta().custom_metadata_map
        config = json.loads(metadata[ONNX_CONFIG_KEY]) if ONNX_CONFIG_KEY in metadata else read_export_config(path)
        self.input_name = self.session.get_inputs()[0].name
        self.provider = self.session.get_providers()[0]
        self._set_pipeline(config, str(path), device, "none", tiling, config.get("weights") == "ema", config.get("step"),
                           int(config.get("size_multiple", TILE_MULTIPLE)), config["model"]["class"].rpartition(".")[2])

    @classmethod
    def from_file(cls, path, device, amp: str, tiling: Tiling, sampling: dict = None) -> "OnnxModel":
        return cls(path, device, tiling)

    @property
    def num_parameters(self) -> int:
        return 0  # the graph's initializers are not counted; describe() names the file

    def describe(self) -> str:
        steps = f", step {self.step}" if self.step is not None else ""
        weights = "EMA weights" if self.used_ema else "weights"
        name = self.config["model"]["class"].rpartition(".")[2]
        return f"{name} (ONNX on onnxruntime {self.provider}, fp32, {weights}{steps}) from {self.source}"

    def compile(self) -> None:
        raise ValueError(f"--compile: {self.source} is an ONNX graph run by onnxruntime, which is not compiled")

    def run_tiles(self, tiles: torch.Tensor) -> torch.Tensor:
        array = np.ascontiguousarray(tiles.float().cpu().numpy())
        output = self.session.run(None, {self.input_name: array})[0]
        return torch.from_numpy(output).to(tiles.device).clamp(0, 1)


# ----------------------------------------------------------------- frozen backbone + refiner

def file_sha256(path) -> str:
    """Hex SHA-256 of a file's bytes, read in 1 MiB chunks: the identity of a backbone checkpoint."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def official_restormer_kwargs(state_dict: dict, source) -> dict:
    """Restormer constructor arguments read off an official (or any) Restormer state dict: widths and
    input channels from ``patch_embed``, blocks per level from the block indices, heads from each
    level's attention temperature, the FFN expansion from ``project_in``, the norm type from the
    presence of norm biases, ``bias`` from the qkv bias (parameter names: swz30/Restormer
    basicsr/models/archs/restormer_arch.py, as in models/restormer.py)."""
    if "patch_embed.proj.weight" not in state_dict or "output.weight" not in state_dict:
        raise CheckpointError(f"{source} is not a Restormer-family checkpoint: expected Restormer weights "
                              "(patch_embed.proj.weight ... output.weight) or a run of this codebase")

    def depth(prefix):
        found = {int(m.group(1)) for k in state_dict for m in [re.match(rf"{prefix}\.(\d+)\.", k)] if m}
        return max(found) + 1 if found else 0

    dim, inp_channels = state_dict["patch_embed.proj.weight"].shape[:2]
    levels = ("encoder_level1", "encoder_level2", "encoder_level3", "latent")
    heads = [int(state_dict[f"{level}.0.attn.temperature"].shape[0]) for level in levels]
    hidden = state_dict["encoder_level1.0.ffn.project_in.weight"].shape[0] // 2
    ffn_expansion_factor = 2.66 if int(dim * 2.66) == hidden else hidden / dim
    return dict(inp_channels=int(inp_channels), out_channels=int(state_dict["output.weight"].shape[0]),
                dim=int(dim), num_blocks=[depth(level) for level in levels],
                num_refinement_blocks=depth("refinement"), heads=heads, ffn_expansion_factor=ffn_expansion_factor,
                bias="encoder_level1.0.attn.qkv.bias" in state_dict,
                LayerNorm_type="WithBias" if "encoder_level1.0.norm1.body.bias" in state_dict else "BiasFree",
                dual_pixel_task="skip_conv.weight" in state_dict)


def load_backbone(path, device, amp: str = "none", tiling: Tiling = None, expected_sha256: str = None):
    """The frozen backbone of a refiner: ``(member, file, sha256)``.

    ``path``: a run folder or ``.pt`` of this codebase (resolved as enhance.py resolves checkpoints:
    best.pt, else last.pt; EMA weights preferred), or an official Restormer ``.pth``/``.safetensors``.
    ``member`` is a :class:`NetworkModel` (the input pipeline the backbone was trained with, tiled
    inference) whose network is frozen for good: ``requires_grad`` False and eval mode, which
    ``train()`` cannot undo. ``expected_sha256``: the hash a refiner run recorded; a different file
    raises. Every failure is a one-line :class:`CheckpointError` naming the file and what was expected.
    """
    from models.restormer import Restormer
    if path is None:
        raise CheckpointError("--backbone is required: a Restormer run folder / .pt of this codebase, or an "
                              "official Restormer .pth")
    try:
        files = resolve_checkpoints(path)
    except CheckpointError as error:
        raise CheckpointError(f"backbone {error}") from error
    file = files[0]
    sha256 = file_sha256(file)
    if expected_sha256 is not None and sha256 != expected_sha256:
        raise CheckpointError(f"backbone {file} changed since the refiner was trained (SHA-256 {sha256[:12]}..., "
                              f"recorded {expected_sha256[:12]}...): restore that file or retrain the refiner")
    checkpoint = load_checkpoint(file)
    tiling = tiling or Tiling()
    config = checkpoint.get("config") if isinstance(checkpoint, dict) else None
    if isinstance(config, dict) and "model" in config:
        if not ("Restormer" in config["model"]["class"].rpartition(".")[2]):
            raise CheckpointError(f"backbone {file} holds a {config['model']['class']}, expected a Restormer-family "
                                  "model (models.restormer.Restormer or a subclass)")
        member = NetworkModel.from_checkpoint(checkpoint, str(file), device, amp, tiling)
    else:
        state_dict = extract_state_dict(checkpoint)
        kwargs = official_restormer_kwargs(state_dict, file)
        model = Restormer(**kwargs)
        load_pretrained(model, {"params": state_dict}, strict=True)
        member = NetworkModel(model, {"model": model_spec(model, kwargs)}, str(file), device, amp, tiling,
                              used_ema=isinstance(checkpoint.get("params_ema"), dict))
    channels = getattr(member.model, "inp_channels", None)
    if not member.features and channels != 3:
        raise CheckpointError(f"backbone {file} takes {channels} input channels but names no input features: "
                              "expected an RGB (3-channel) Restormer")
    freeze(member.model)
    return member, file, sha256


def freeze(model: torch.nn.Module) -> torch.nn.Module:
    """No gradients and eval mode for good: ``model.train()`` (e.g. after validation) keeps it in eval."""
    model.requires_grad_(False).eval()
    model.train = lambda mode=True: model  # instance attribute: shadows nn.Module.train for this model only
    return model


class RefinerModel:
    """A frozen backbone and the refiner trained on its output, as one ensemble member: the backbone's
    tiled output (exactly as in training), then the refiner over tiles of (backbone output, photo)."""

    def __init__(self, backbone: NetworkModel, refiner: NetworkModel):
        self.backbone, self.refiner = backbone, refiner

    @classmethod
    def from_checkpoint(cls, checkpoint: dict, source: str, device, amp: str, tiling: Tiling,
                        sampling: dict = None) -> "RefinerModel":
        """The refiner's checkpoint names its backbone (``config['refiner']``: path and SHA-256); the
        backbone file must still be there and unchanged."""
        record = checkpoint["config"]["refiner"]
        try:
            backbone, _, _ = load_backbone(record["backbone"], device, amp, tiling, record["backbone_sha256"])
        except CheckpointError as error:
            raise CheckpointError(f"{source}: {error}") from error
        return cls(backbone, NetworkModel.from_checkpoint(checkpoint, source, device, amp, tiling))

    @property
    def num_parameters(self) -> int:
        return self.backbone.num_parameters + self.refiner.num_parameters

    def describe(self) -> str:
        return f"{self.refiner.describe()} on frozen {self.backbone.describe()}"

    @torch.no_grad()
    def predict(self, rgb: np.ndarray, photo_cache: dict = None) -> torch.Tensor:
        base = self.backbone.predict(rgb, photo_cache)
        photo = torch.from_numpy(np.ascontiguousarray(rgb)).permute(2, 0, 1)[None].to(base.device)
        refiner = self.refiner

        def run_refiner(tiles):
            with autocast(refiner.device, refiner.amp):
                return refiner.model(tiles).float().clamp(0, 1)

        tiling = refiner.tiling
        return tiled_forward(run_refiner, torch.cat([base, photo], 1), tile=tiling.tile, overlap=tiling.overlap,
                             batch_size=tiling.batch_size, device=refiner.device, multiple=refiner.size_multiple)


# (config key, loader): the first key present in a checkpoint's config picks how it is loaded. A
# loader takes (checkpoint, source, device, amp, tiling, sampling) and returns an object with
# ``predict(rgb, photo_cache) -> (1, 3, H, W)``, ``describe()`` and ``num_parameters``.
def _controlnet_member(*args):
    # Imported when a ControlNet checkpoint is loaded: the pipeline module builds on this one.
    from .controlnet_pipeline import controlnet_member
    return controlnet_member(*args)


MODEL_KINDS = (
    ("controlnet", _controlnet_member),
    ("refiner", RefinerModel.from_checkpoint),
    ("model", NetworkModel.from_checkpoint),
)


class Enhancer:
    """One model or an ensemble (the mean of the members' outputs) behind one ``enhance`` call."""

    def __init__(self, members: list, device):
        if not members:
            raise ValueError("an Enhancer needs at least one model")
        self.members, self.device = list(members), torch.device(device)

    @property
    def num_parameters(self) -> int:
        return sum(member.num_parameters for member in self.members)

    def compile(self) -> None:
        """``torch.compile`` every member's network; a diffusion member refuses with one line."""
        for member in self.members:
            if not hasattr(member, "compile"):
                raise ValueError(f"--compile: {member.describe()} is a diffusion pipeline, which is not compiled")
            member.compile()

    def describe(self) -> str:
        if len(self.members) == 1:
            return self.members[0].describe()
        return f"ensemble of {len(self.members)}: " + "; ".join(member.describe() for member in self.members)

    def predict(self, rgb: np.ndarray) -> torch.Tensor:
        """(1, 3, H, W) float32 in [0, 1] on the device for an HxWx3 float32 photo in [0, 1]."""
        if rgb.ndim != 3 or rgb.shape[2] != 3:
            raise ValueError(f"expected an HxWx3 RGB photo, got shape {rgb.shape}")
        if not np.issubdtype(rgb.dtype, np.floating):
            # an 8- or 16-bit photo as read would come out nearly white, without an error
            raise ValueError(f"expected a float photo in [0, 1], got {rgb.dtype} (data.io.read_image gives one)")
        rgb = np.asarray(rgb, dtype=np.float32)
        photo_cache = {}
        total = None
        for member in self.members:
            output = member.predict(rgb, photo_cache)
            total = output if total is None else total + output
        return total / len(self.members) if len(self.members) > 1 else total

    def enhance(self, rgb: np.ndarray) -> np.ndarray:
        """The enhanced photo: HxWx3 float32 in [0, 1], same size as ``rgb``."""
        return self.predict(rgb)[0].permute(1, 2, 0).cpu().numpy()


def load_member(path, device, amp: str = "none", tiling: Tiling = None, sampling: dict = None):
    """Load one checkpoint file as an ensemble member (see :data:`MODEL_KINDS`); ``sampling``: the
    denoising ``steps`` and ``seed`` of diffusion models (None: the run's own)."""
    path = Path(path)
    if path.suffix == ".onnx":
        return OnnxModel.from_file(path, device, amp, tiling or Tiling(), sampling)
    if path.suffix == ".safetensors" and path.with_name(EXPORT_CONFIG_NAME).is_file():
        checkpoint = load_exported(path)
    else:
        checkpoint = load_checkpoint(path)
    config = checkpoint.get("config") if isinstance(checkpoint, dict) else None
    if not isinstance(config, dict):
        raise CheckpointError(f"{path} has no run config: enhance needs a checkpoint written by a train_*.py "
                              "script (published weights go in through a script's --pretrained)")
    for key, loader in MODEL_KINDS:
        if key in config:
            return loader(checkpoint, str(path), device, amp, tiling or Tiling(), sampling)
    raise CheckpointError(f"{path}: its config names no model (expected one of the keys "
                          f"{', '.join(key for key, _ in MODEL_KINDS)})")


def load_enhancer(checkpoint_paths, device="cpu", amp: str = "none", tile: int = DEFAULT_TILE,
                  overlap: int = DEFAULT_OVERLAP, batch_size: int = DEFAULT_BATCH_SIZE,
                  sampling: dict = None) -> Enhancer:
    """An :class:`Enhancer` for one checkpoint or an ensemble of several (see :func:`resolve_checkpoints`
    for the paths accepted). ``amp``: 'none', 'bf16' or 'fp16' autocast for the networks;
    ``tile`` 0 runs whole photos. Raises ``CheckpointError``/``ValueError`` with a one-line message."""
    if amp not in AMP_MODES:
        raise ValueError(f"--amp must be one of {', '.join(AMP_MODES)}, got {amp!r}")
    tiling = Tiling(tile, overlap, batch_size)
    members = [load_member(path, device, amp, tiling, sampling) for path in resolve_checkpoints(checkpoint_paths)]
    return Enhancer(members, device)


def add_inference_args(parser: argparse.ArgumentParser, checkpoint: str = "optional") -> None:
    """The model and tiling flags that enhance.py, evaluate.py and report.py share; ``checkpoint``
    says whether --checkpoint is 'required', 'optional' or not offered ('none')."""
    group = parser.add_argument_group("model")
    if checkpoint != "none":
        group.add_argument("--checkpoint", nargs="+", required=checkpoint == "required", metavar="CKPT",
                           help="a .pt file, a run folder (its best.pt, else last.pt), a folder of fold_*/ runs, "
                                "an export.py model.safetensors / model.onnx (or its folder), "
                                "or several of these: the mean of their outputs (an ensemble)")
    add_trust_flag(group)
    group.add_argument("--tile", type=int, default=DEFAULT_TILE,
                       help=f"tile size in pixels, a multiple of 8 and of the model's window (HAT 16, DAT 32) "
                            f"(0: whole photos; default {DEFAULT_TILE})")
    group.add_argument("--overlap", type=int, default=DEFAULT_OVERLAP,
                       help=f"pixels shared by neighbouring tiles, blended (default {DEFAULT_OVERLAP})")
    group.add_argument("--batch-size", type=int, default=None,
                       help=f"tiles per forward pass (default {DEFAULT_BATCH_SIZE} on CUDA, 1 on a CPU, where "
                            "batching adds memory but no speed)")
    group.add_argument("--device", default="auto", help="auto (CUDA if available), cpu, cuda, cuda:1, ...")
    group.add_argument("--amp", choices=AMP_MODES, default=None,
                       help="mixed precision (default: bf16 on CUDA, none on CPU; none is the most exact)")
    group.add_argument("--compile", action="store_true",
                       help="torch.compile the networks (pays off on CUDA over many tiles of one size)")
    diffusion = parser.add_argument_group("diffusion (ControlNet runs)")
    diffusion.add_argument("--denoise-steps", type=int, default=None,
                           help="denoising steps per tile (default: the run's --denoise-steps)")
    diffusion.add_argument("--denoise-seed", type=int, default=None, help="noise seed (default: the run's --seed)")


def enhancer_from_args(args, checkpoints=None) -> Enhancer:
    """The :class:`Enhancer` the flags of :func:`add_inference_args` describe (``checkpoints``
    replaces ``--checkpoint``); prints what was loaded."""
    set_trust_checkpoints(args.trust_checkpoint)
    device = select_device(args.device)
    configure_backend(device)
    batch_size = args.batch_size or (DEFAULT_BATCH_SIZE if device.type == "cuda" else 1)
    enhancer = load_enhancer(checkpoints or args.checkpoint, device, resolve_amp(args.amp, device),
                             tile=args.tile, overlap=args.overlap, batch_size=batch_size,
                             sampling={"steps": args.denoise_steps, "seed": args.denoise_seed})
    if getattr(args, "compile", False):
        enhancer.compile()
    print(f"model: {enhancer.describe()}")
    return enhancer


def write_like(photo, destination, rgb: np.ndarray, quality: int = 95) -> None:
    """Write ``rgb`` to ``destination`` (format from its extension) with the bit depth, EXIF and ICC
    profile of ``photo``; creates the folder. Atomic: written to a hidden temporary file in the same
    folder (which enhance.py's listing skips), then renamed, so a crash never leaves a half-written photo."""
    metadata = read_metadata(photo)
    destination = Path(destination)
    destination.parent.mkdir(parents=True, exist_ok=True)
    temporary = destination.with_name(f".{destination.stem}.tmp{os.getpid()}{destination.suffix}")
    try:
        write_image(temporary, rgb, bit_depth=metadata["bit_depth"], exif=metadata["exif"],
                    icc_profile=metadata["icc_profile"], quality=quality)
        os.replace(temporary, destination)
    finally:
        temporary.unlink(missing_ok=True)


def is_up_to_date(photo, destination) -> bool:
    """Whether ``destination`` exists and is newer than ``photo`` (its enhancement is done)."""
    destination = Path(destination)
    return destination.is_file() and destination.stat().st_mtime >= Path(photo).stat().st_mtime
