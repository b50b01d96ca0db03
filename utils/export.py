"""Deployable copies of a trained run: ``model.safetensors`` + ``config.json``, or ``model.onnx``.

    export_safetensors("runs/train_restormer_512_combined_loss", "deploy/")   # model.safetensors, config.json
    export_onnx("runs/train_restormer_512_combined_loss", "deploy/")         # model.onnx, config.json

Both hold the weights enhance.py would use (the EMA weights when the run has them) and the same
``config.json``: the architecture (class path + constructor kwargs, as ``config['model']`` of a
checkpoint), the input features and preprocessing of the run, so :func:`utils.inference.load_member`
rebuilds the same input pipeline from either file. The ONNX file also carries that config in its
metadata (key ``rehdr_config``), so it is usable on its own.

ONNX graph: opset :data:`ONNX_OPSET` (TorchScript exporter; 17 is the first opset with
LayerNormalization and is run by every onnxruntime >= 1.14), input ``input`` (N, C, H, W) float32,
output ``output`` (N, 3, H, W), N, H and W dynamic. Padding is done OUTSIDE the graph: H and W must
be multiples of ``size_multiple`` (in the config; 8 for the library's U-Nets); enhance.py's tiling
pads every tile to it. Right after writing, onnxruntime's output on a random input of another size
than the traced one is compared with PyTorch's (:data:`ONNX_TOLERANCE`). A module the exporter cannot
translate is traced through an equal forward from :data:`ONNX_SUBSTITUTES` (DarkIR's FFT block as
real DFT matrix products); any other untranslatable operator ends the export with
:class:`ExportBlocked`, one line naming the operator and the alternative (safetensors + PyTorch).
"""
import contextlib
import json
import math
import os
import re
import sys
import types
from pathlib import Path

import numpy as np
import torch

from .checkpoint import (EXPORT_CONFIG_NAME, EXPORT_FORMAT, CheckpointError, build_model, extract_state_dict,
                         load_checkpoint)
from .inference import ONNX_CONFIG_KEY, TILE_MULTIPLE, resolve_checkpoints

ONNX_OPSET = 17
ONNX_TOLERANCE = 1e-4
SAFETENSORS_NAME = "model.safetensors"
ONNX_NAME = "model.onnx"
ONNX_HINT = "pip install -r requirements-extras.txt (onnx, onnxruntime)"
# Sizes of the traced and of the checking input: different, so the check proves H and W are dynamic.
TRACE_SIZE = (64, 64)
CHECK_SIZE = (72, 88)
# Operators the ONNX exporter has no translation for, by what they are in this library's networks.
KNOWN_BLOCKERS = {
    "aten::fft_rfft2": "a complex FFT (torch.fft.rfft2)",
    "aten::fft_irfft2": "a complex inverse FFT (torch.fft.irfft2)",
    "aten::angle": "a complex phase (torch.angle)",
    "aten::complex": "a complex tensor (torch.complex)",
}


def _fremlp_by_real_dft(module, x: torch.Tensor) -> torch.Tensor:
    """DarkIR's FreMLP (models/darkir.py) with rfft2/irfft2 written as real matrix products, which
    ONNX expresses (its DFT operator has no PyTorch exporter translation at this opset), for any H, W.

    rfft along W and a full DFT along H give the spectrum Y = Yr + i Yi; the block's output spectrum
    A exp(i angle Y) is A * Y / |Y| (A alone where |Y| = 0, as angle(0) = 0); the inverse DFT along
    H, then the inverse real DFT along W with weight 1 for the DC and Nyquist bins and 2 for the
    others, as irfft2 (s=(H, W), norm='backward'). Angles use (n * k) mod N, exact in integers, so
    their float32 rounding does not grow with the size. Cost: O(HW(H + W)) per channel, not O(HW log HW).
    """
    height, width = x.shape[-2:]
    dtype, x = x.dtype, x.float()

    def dft_matrices(n_rows, n_cols, size):
        rows, cols = torch.arange(n_rows), torch.arange(n_cols)
        angle = (rows[:, None] * cols[None, :]) % size * (2 * math.pi / size)
        return torch.cos(angle), torch.sin(angle)

    bins = width // 2 + 1
    cos_w, sin_w = dft_matrices(width, bins, width)            # (W, W/2+1)
    cos_h, sin_h = dft_matrices(height, height, height)         # (H, H), symmetric
    real, imag = x @ cos_w, -(x @ sin_w)                        # rfft along W
    real, imag = cos_h @ real + sin_h @ imag, cos_h @ imag - sin_h @ real   # DFT along H
    magnitude = torch.sqrt(real * real + imag * imag)
    amplitude = module.process1(magnitude)
    nonzero = magnitude > 0
    scale = amplitude / torch.where(nonzero, magnitude, torch.ones_like(magnitude))
    real, imag = torch.where(nonzero, real * scale, amplitude), torch.where(nonzero, imag * scale, torch.zeros_like(imag))
    real, imag = (cos_h @ real - sin_h @ imag) / height, (cos_h @ imag + sin_h @ real) / height   # inverse along H
    k = torch.arange(bins)
    weight = 2.0 - (k == 0).float() - (2 * k == width).float()  # DC and (even W) Nyquist once, the rest twice
    out = ((real * weight) @ cos_w.transpose(0, 1) - (imag * weight) @ sin_w.transpose(0, 1)) / width
    return out.to(dtype)


# Modules whose forward the exporter cannot translate, by class path, and an equal forward it can
# (the check after export compares the graph with the original forward).
ONNX_SUBSTITUTES = {"models.darkir.FreMLP": _fremlp_by_real_dft}


@contextlib.contextmanager
def _substituted_for_export(model: torch.nn.Module):
    patched = []
    for module in model.modules():
        cls = type(module)
        substitute = ONNX_SUBSTITUTES.get(f"{cls.__module__}.{cls.__qualname__}")
        if substitute is not None:
            module.forward = types.MethodType(substitute, module)
            patched.append(module)
    try:
        yield
    finally:
        for module in patched:
            del module.forward


# Modules that trace but whose graph would be fixed to the traced photo size, by class path: why.
ONNX_BLOCKING_MODULES = {
    "models.ss2d.SS2D": "its selective scan (models/scan.py) loops over the H*W sequence in Python, which a "
                        "traced graph fixes to one photo size",
    "models.nafnet.LocalAvgPool2d": "its pooling window is computed from the input size in Python (test-time local "
                                    "statistics), which a traced graph fixes to one photo size (export NAFNet instead)",
}


class ExportBlocked(ValueError):
    """An architecture the ONNX exporter cannot translate; the message names the operator."""


def _import_onnx():
    try:
        import onnx
        import onnxruntime
    except ImportError as error:
        raise ImportError(f"ONNX export needs the onnx and onnxruntime packages: {ONNX_HINT}") from error
    return onnx, onnxruntime


def load_run(checkpoint_path) -> tuple:
    """(checkpoint dict, its file) for a run folder or a checkpoint file (a single model, not an ensemble)."""
    files = resolve_checkpoints(checkpoint_path)
    if len(files) != 1:
        raise CheckpointError(f"{checkpoint_path} holds {len(files)} checkpoints (a cross-validation run?); "
                              "export one of them, e.g. --checkpoint {}".format(files[0].parent))
    checkpoint = load_checkpoint(files[0])
    config = checkpoint.get("config") if isinstance(checkpoint, dict) else None
    if not isinstance(config, dict):
        raise CheckpointError(f"{files[0]} has no run config: export needs a checkpoint written by a train_*.py script")
    if "controlnet" in config:
        raise CheckpointError(f"{files[0]} is a ControlNet diffusion run (VAE, text encoder, UNet and a sampler "
                              "loop, not one network): it is not exported; serve it with enhance.py and the checkpoint")
    if "refiner" in config:
        raise CheckpointError(f"{files[0]} is a colour refiner on a frozen backbone (two networks, the backbone "
                              f"in {config['refiner'].get('path')}): it is not exported as one graph; export the "
                              "backbone run, and serve backbone + refiner with enhance.py and this checkpoint")
    if "model" not in config:
        raise CheckpointError(f"{files[0]}: its config names no model (config['model'])")
    return checkpoint, files[0]


def size_multiple(model: torch.nn.Module) -> int:
    """The multiple H and W must have inside the network, as enhance.py tiles for it: the tiles' 8
    and the model's ``size_multiple`` (HAT, DAT: their attention windows) or DarkIR's ``padder_size``."""
    return math.lcm(TILE_MULTIPLE, int(getattr(model, "size_multiple", getattr(model, "padder_size", 1))))


def export_config(checkpoint: dict, source, model: torch.nn.Module) -> dict:
    """The ``config.json`` of an export: what rebuilds the network and its input pipeline."""
    config = checkpoint["config"]
    has_ema = isinstance(checkpoint.get("ema"), dict) or isinstance(checkpoint.get("params_ema"), dict)
    return {"format": EXPORT_FORMAT, "model": config["model"], "preprocess": config.get("preprocess") or [],
            "input_features": config.get("input_features"), "depth_model": config.get("depth_model"),
            "size_multiple": size_multiple(model), "weights": "ema" if has_ema else "model",
            "step": checkpoint.get("step"), "source": str(source)}


def build_exported_model(checkpoint: dict) -> torch.nn.Module:
    """The run's network with the weights enhance.py uses (EMA when present), in eval mode on the CPU."""
    model = build_model(checkpoint["config"]["model"])
    model.load_state_dict(extract_state_dict(checkpoint, prefer_ema=True), strict=True)
    return model.eval()


def _write_config(config: dict, out_dir: Path) -> Path:
    path = out_dir / EXPORT_CONFIG_NAME
    path.write_text(json.dumps(config, indent=2) + "\n")
    return path


def export_safetensors(checkpoint_path, out_dir) -> list:
    """Write ``model.safetensors`` and ``config.json`` into ``out_dir``; returns their paths."""
    from safetensors.torch import save_file
    checkpoint, source = load_run(checkpoint_path)
    model = build_exported_model(checkpoint)
    config = export_config(checkpoint, source, model)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    # contiguous clones: safetensors refuses tensors that share storage (tied or sliced weights)
    weights = {name: tensor.detach().clone().contiguous() for name, tensor in model.state_dict().items()}
    save_file(weights, out_dir / SAFETENSORS_NAME, metadata={"format": EXPORT_FORMAT, "class": config["model"]["class"]})
    return [out_dir / SAFETENSORS_NAME, _write_config(config, out_dir)]


def _input_channels(config: dict) -> int:
    from data.features import num_input_channels
    return num_input_channels(config["input_features"]) if config.get("input_features") else 3


def _blocked(model: torch.nn.Module, error: Exception) -> ExportBlocked:
    operator = re.search(r"operator '([\w:.]+)'", str(error))
    name = type(model).__name__
    if operator is None:
        return ExportBlocked(f"{name} does not export to ONNX (opset {ONNX_OPSET}): {type(error).__name__}: "
                             f"{str(error).strip().splitlines()[0] if str(error).strip() else ''}; "
                             "deploy it with --format safetensors and enhance.py's PyTorch path instead")
    what = KNOWN_BLOCKERS.get(operator.group(1), "an operator")
    return ExportBlocked(f"{name} does not export to ONNX: {what}, {operator.group(1)}, has no ONNX opset "
                         f"{ONNX_OPSET} translation; deploy it with --format safetensors and enhance.py's PyTorch path instead")


@contextlib.contextmanager
def _stdout_discarded():
    """File descriptor 1 to /dev/null (what C++ code prints bypasses ``sys.stdout``)."""
    sys.stdout.flush()
    saved = os.dup(1)
    with open(os.devnull, "w") as devnull:
        os.dup2(devnull.fileno(), 1)
    try:
        yield
    finally:
        os.dup2(saved, 1)
        os.close(saved)


def trace_to_onnx(model: torch.nn.Module, path, channels: int, opset: int = ONNX_OPSET) -> None:
    """Export ``model`` (N, C, H, W) -> (N, 3, H, W) with dynamic N, H, W; raises :class:`ExportBlocked`."""
    import warnings
    for module in model.modules():
        cls = type(module)
        reason = ONNX_BLOCKING_MODULES.get(f"{cls.__module__}.{cls.__qualname__}")
        if reason is not None:
            raise ExportBlocked(f"{type(model).__name__} does not export to ONNX with dynamic H and W: {cls.__name__}: "
                                f"{reason}; deploy it with --format safetensors and enhance.py's PyTorch path instead")
    dummy = torch.rand(1, channels, *TRACE_SIZE)
    axes = {0: "batch", 2: "height", 3: "width"}
    try:
        # the tracer warns about the shape checks and the (not taken) padding branch (padding is
        # outside), and on failure its C++ side prints the whole traced graph: the one-line error says it all
        with warnings.catch_warnings(), torch.no_grad(), _stdout_discarded(), _substituted_for_export(model):
            warnings.simplefilter("ignore")
            torch.onnx.export(model, (dummy,), str(path), dynamo=False, opset_version=opset,
                              input_names=["input"], output_names=["output"],
                              dynamic_axes={"input": axes, "output": axes})
    except Exception as error:  # the exporter raises several types for an untranslatable operator
        raise _blocked(model, error) from error


def check_onnx(path, model: torch.nn.Module, channels: int, multiple: int, seed: int = 0) -> float:
    """Max |onnxruntime - PyTorch| on a random input of :data:`CHECK_SIZE` (rounded up to ``multiple``);
    raises ValueError above :data:`ONNX_TOLERANCE`."""
    _, onnxruntime = _import_onnx()
    height, width = (-(-size // multiple) * multiple for size in CHECK_SIZE)
    photo = torch.rand(1, channels, height, width, generator=torch.Generator().manual_seed(seed))
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    with torch.no_grad():
        expected = model(photo).numpy()
    try:
        actual = session.run(None, {"input": photo.numpy()})[0]
    except Exception as error:  # onnxruntime's own types: a shape baked into the graph at trace time
        raise ValueError(f"ONNX check failed: the graph does not run on a 1x{channels}x{height}x{width} input "
                         f"(a size fixed at trace time?): {str(error).strip().splitlines()[0][:200]}") from error
    if actual.shape != expected.shape:
        raise ValueError(f"ONNX check failed: output shape {actual.shape} vs PyTorch {expected.shape}")
    difference = float(np.abs(actual - expected).max())
    if not difference <= ONNX_TOLERANCE:
        raise ValueError(f"ONNX check failed: max |onnxruntime - PyTorch| = {difference:.2e} on a random "
                         f"1x{channels}x{height}x{width} input, above {ONNX_TOLERANCE:g}")
    return difference


def export_onnx(checkpoint_path, out_dir, opset: int = ONNX_OPSET) -> tuple:
    """Write ``model.onnx`` (config in its metadata) and ``config.json``, then check the graph;
    returns (paths, max difference of the check)."""
    onnx, _ = _import_onnx()
    checkpoint, source = load_run(checkpoint_path)
    model = build_exported_model(checkpoint)
    config = dict(export_config(checkpoint, source, model), onnx_opset=opset)
    channels = _input_channels(config)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / ONNX_NAME
    trace_to_onnx(model, path, channels, opset)
    graph = onnx.load(str(path))
    entry = graph.metadata_props.add()
    entry.key, entry.value = ONNX_CONFIG_KEY, json.dumps(config)
    onnx.save(graph, str(path))
    difference = check_onnx(path, model, channels, config["size_multiple"])
    return [path, _write_config(config, out_dir)], difference
