"""The one checkpoint format, and tolerant-but-loud weight loading.

A training checkpoint is a dict::

    {'format': 'rehdr-checkpoint-v1', 'step': int, 'config': dict, 'model': state_dict,
     'ema': state_dict | None, 'optimizer': ..., 'scheduler': ..., 'scaler': ..., 'rng': {...},
     'extra': dict}

written atomically (temporary file + ``os.replace``), so an interruption never leaves a half-written
``last.pt``. ``config['model']`` holds the model's class path and constructor arguments, so
``enhance.py`` can rebuild any model of the library from the file alone.

Reading a file never runs code from it: ``.safetensors`` files are read by safetensors, everything
else by PyTorch's restricted unpickler (``torch.load(weights_only=True)``: tensors, plain containers,
numbers, strings). Checkpoints of this codebase hold nothing else; the ones written before the RNG
state was stored as tensors hold numpy's state as an ``ndarray``, so numpy's array and scalar types,
and no other, are allowed by name (:data:`NUMPY_ARRAY_GLOBALS`). A file the restricted unpickler
refuses (it names a class or function, e.g. ``posix.system``) raises a one-line
:class:`CheckpointError`; it is unpickled in full only after the user opts in with
``--trust-checkpoint`` or ``REHDR_TRUST_CHECKPOINTS=1``, or converts it once
(``python tools/convert_checkpoint.py IN OUT.safetensors``).
"""
import importlib
import os
import pickle
import random
import re
import sys
import warnings
from pathlib import Path

import numpy as np
import torch

from data.io import atomic_destination
from models.expand import INPUT_CONV_KEY, expand_to_model

CHECKPOINT_FORMAT = "rehdr-checkpoint-v1"
# export.py's layout: the weights as model.safetensors (or the graph as model.onnx) + config.json
EXPORT_FORMAT = "rehdr-export-v1"
EXPORT_CONFIG_NAME = "config.json"
EXPORT_WEIGHTS_NAME = "model.safetensors"
# Keys under which published checkpoints keep their weights, in order of preference.
WEIGHT_KEYS = ("params_ema", "params", "ema", "model", "state_dict")
PREFIXES = ("module.", "_orig_mod.")
TRUST_ENV = "REHDR_TRUST_CHECKPOINTS"
CONVERT_HINT = "python tools/convert_checkpoint.py"

try:  # numpy >= 2 pickles arrays through numpy._core, files from numpy 1.x name numpy.core
    from numpy._core import multiarray as _numpy_multiarray
except ImportError:  # numpy 1.x
    from numpy.core import multiarray as _numpy_multiarray
# What numpy arrays and scalars pickle as: an array is rebuilt from a dtype and raw bytes, a scalar from
# a dtype and bytes (object arrays' items still go through the restricted unpickler). Checkpoints
# written before the RNG state was stored as tensors hold numpy's MT19937 key as a uint32 array;
# published files sometimes hold arrays or scalars (metrics) too.
NUMPY_ARRAY_GLOBALS = [(getattr(_numpy_multiarray, name), f"{module}.multiarray.{name}")
                       for name in ("_reconstruct", "scalar") for module in ("numpy._core", "numpy.core")]
NUMPY_ARRAY_GLOBALS += [np.ndarray, np.dtype] + [type(np.dtype(kind)) for kind in (  # numeric dtypes only
    np.bool_, np.int8, np.int16, np.int32, np.int64, np.uint8, np.uint16, np.uint32, np.uint64,
    np.float16, np.float32, np.float64, np.complex64, np.complex128)]
_trust_flag = False


class CheckpointError(ValueError):
    """A checkpoint that is missing, unreadable, or does not fit the model."""


def unwrap_model(model: torch.nn.Module) -> torch.nn.Module:
    """The plain module behind DistributedDataParallel / DataParallel / torch.compile wrappers."""
    while True:
        if hasattr(model, "module") and isinstance(model.module, torch.nn.Module):
            model = model.module
        elif hasattr(model, "_orig_mod"):
            model = model._orig_mod
        else:
            return model


def model_spec(model: torch.nn.Module, kwargs: dict) -> dict:
    """What :func:`build_model` needs to rebuild ``model``: its class path and constructor kwargs."""
    cls = type(unwrap_model(model))
    return {"class": f"{cls.__module__}.{cls.__qualname__}", "kwargs": dict(kwargs)}


def build_model(spec: dict) -> torch.nn.Module:
    """Instantiate the model a :func:`model_spec` dict describes (the class is imported by path)."""
    module_name, _, class_name = spec["class"].rpartition(".")
    cls = getattr(importlib.import_module(module_name), class_name)
    return cls(**spec["kwargs"])


def rng_state() -> dict:
    """Every RNG's state as data the restricted unpickler reads: Python's is a tuple of ints, numpy's
    MT19937 key goes in as an int64 tensor (a numpy array would need an allow-list)."""
    name, key, pos, has_gauss, gauss = np.random.get_state()
    state = {"python": random.getstate(), "torch": torch.get_rng_state(),
             "numpy": (name, torch.from_numpy(key.astype(np.int64)), pos, has_gauss, gauss)}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    """Restore :func:`rng_state`; numpy's key may be a tensor (now) or an ndarray (older checkpoints)."""
    random.setstate(state["python"])
    name, key, *rest = state["numpy"]
    key = key.numpy() if isinstance(key, torch.Tensor) else np.asarray(key)
    np.random.set_state((name, key.astype(np.uint32), *rest))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def atomic_save(obj, path) -> None:
    """torch.save to a temporary file next to ``path``, then rename over it. On a full disk (torch
    reports it as ``RuntimeError ... unexpected pos``) the temporary file is removed, ``path`` keeps
    its previous content, and :class:`data.io.DiskFullError` says which folder is full."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_destination(path) as tmp:
        torch.save(obj, tmp)


def save_checkpoint(path, *, step: int, model, config: dict, optimizer=None, scheduler=None,
                    scaler=None, ema=None, extra: dict = None) -> None:
    """Write a full training checkpoint (see the module docstring) atomically."""
    atomic_save({
        "format": CHECKPOINT_FORMAT,
        "step": step,
        "config": config,
        "model": unwrap_model(model).state_dict(),
        "ema": ema.state_dict() if ema is not None else None,
        "optimizer": optimizer.state_dict() if optimizer is not None else None,
        "scheduler": scheduler.state_dict() if scheduler is not None else None,
        "scaler": scaler.state_dict() if scaler is not None and scaler.is_enabled() else None,
        "rng": rng_state(),
        "extra": extra or {},
    }, path)


def set_trust_checkpoints(trusted: bool) -> None:
    """``--trust-checkpoint``: unpickle in full the files the restricted unpickler refuses (that can
    run code the file holds). Every command line sets it, so one run's opt-in ends with that run."""
    global _trust_flag
    _trust_flag = bool(trusted)


def add_trust_flag(parser) -> None:
    """``--trust-checkpoint`` on a parser or argument group (training scripts, enhance, evaluate, report)."""
    parser.add_argument("--trust-checkpoint", action="store_true",
                        help="unpickle in full the weight/checkpoint files that the safe loader refuses: that "
                             f"can run code from the file, so only for files you trust (or {TRUST_ENV}=1; "
                             f"better: convert them once with {CONVERT_HINT} IN OUT.safetensors)")


def checkpoints_trusted() -> bool:
    """Whether the user opted in to full unpickling (``--trust-checkpoint`` or ``REHDR_TRUST_CHECKPOINTS=1``)."""
    return _trust_flag or os.environ.get(TRUST_ENV) == "1"


def refused_globals(path, error: Exception):
    """The classes/functions that made the restricted unpickler refuse ``path``, read from the pickle
    without running it (else from torch's message), joined by commas; None when the file names none
    (then it is corrupt, not refused)."""
    try:
        with torch.serialization.safe_globals(NUMPY_ARRAY_GLOBALS):
            names = torch.serialization.get_unsafe_globals_in_checkpoint(path)
    except Exception:  # the legacy (non-zip) format and corrupt files cannot be scanned
        names = []
    if names:
        return ", ".join(sorted(names))
    found = re.search(r"GLOBAL ([\w.]+)|but got <class '([\w.]+)'>", str(error))
    return (found.group(1) or found.group(2)) if found else None


def _read_error(path, error) -> CheckpointError:
    # torch's weights-only message starts with generic advice; its reason follows this marker
    reason = re.search(r"WeightsUnpickler error:\s*([^\n]+)", str(error))
    first_line = reason.group(1).strip() if reason else (str(error).strip().splitlines() or [""])[0]
    return CheckpointError(f"cannot read checkpoint {path}: {type(error).__name__}: {first_line}")


def load_checkpoint(path, map_location="cpu", trust: bool = None, assemble_shards: bool = True) -> dict:
    """Read any checkpoint file (ours, published ``.pt``/``.pth``, or ``.safetensors``) without running
    code from it (see the module docstring); one-line error if missing, unreadable or refused.
    A sharded run's checkpoint (``'sharded'``: the folder of its shards, see
    :func:`read_sharded_weights`) comes back with the full model weights under ``'model'`` (unless
    ``assemble_shards=False``: resuming reads the shards itself).

    ``trust``: unpickle refused files in full (default: :func:`checkpoints_trusted`)."""
    path = Path(path)
    if path.is_dir():
        path = path / (EXPORT_WEIGHTS_NAME if (path / EXPORT_WEIGHTS_NAME).is_file() else "last.pt")
    checkpoint = _read_checkpoint_file(path, map_location, trust)
    if assemble_shards and isinstance(checkpoint, dict) and checkpoint.get("sharded") and checkpoint.get("model") is None:
        checkpoint["model"] = read_sharded_weights(path.parent / checkpoint["sharded"])
    return checkpoint


def read_sharded_weights(folder) -> dict:
    """The full model state dict of a ``torch.distributed.checkpoint`` folder (the ``model`` entry that
    :class:`utils.distributed.ShardedTrainingState` saves), assembled in this one process whatever
    number of processes wrote it."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.metadata import TensorStorageMetadata
    folder = Path(folder)
    if not (folder / ".metadata").is_file():
        raise CheckpointError(f"sharded checkpoint folder not found or incomplete: {folder}")
    metadata = dcp.FileSystemReader(str(folder)).read_metadata()
    weights = {key[len("model."):]: torch.empty(entry.size, dtype=entry.properties.dtype)
               for key, entry in metadata.state_dict_metadata.items()
               if key.startswith("model.") and isinstance(entry, TensorStorageMetadata)}
    state = {"model": weights}
    with warnings.catch_warnings():  # "assuming the intent is to load in a single process": it is
        warnings.filterwarnings("ignore", message="torch.distributed is disabled")
        dcp.load(state, checkpoint_id=str(folder), no_dist=True)
    return state["model"]


def _read_checkpoint_file(path: Path, map_location, trust) -> dict:
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        # torch.load hands a .safetensors file to safetensors.torch.load_file itself
        with torch.serialization.safe_globals(NUMPY_ARRAY_GLOBALS):
            return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as error:
        refused = refused_globals(path, error)
        if refused is None:
            raise _read_error(path, error) from error
    except Exception as error:  # torch raises several types for truncated/corrupt files
        raise _read_error(path, error) from error
    if not (checkpoints_trusted() if trust is None else trust):
        raise CheckpointError(
            f"refused to load {path}: it names {refused}, not plain weights data (unpickling it could run "
            f"code); if you trust the file, pass --trust-checkpoint (or set {TRUST_ENV}=1), or convert it "
            f"once: {CONVERT_HINT} {path} {path.with_suffix('.safetensors')}")
    print(f"warning: {path} holds {refused}: unpickled in full because checkpoints are trusted "
          f"(--trust-checkpoint / {TRUST_ENV}=1)", file=sys.stderr)
    try:
        return torch.load(path, map_location=map_location, weights_only=False)
    except Exception as error:
        raise _read_error(path, error) from error


def read_export_config(path) -> dict:
    """The ``config.json`` that export.py writes next to an exported file; one-line error when absent."""
    import json
    config_path = Path(path).with_name(EXPORT_CONFIG_NAME)
    if not config_path.is_file():
        raise CheckpointError(f"{path} has no {EXPORT_CONFIG_NAME} next to it: enhance needs the config that "
                              "export.py writes (architecture, input features, preprocessing)")
    try:
        config = json.loads(config_path.read_text())
    except (ValueError, OSError) as error:
        raise CheckpointError(f"cannot read {config_path}: {type(error).__name__}: {error}") from error
    if not isinstance(config, dict) or config.get("format") != EXPORT_FORMAT or "model" not in config:
        raise CheckpointError(f"{config_path} is not an export config (format {EXPORT_FORMAT} with a 'model')")
    return config


def load_exported(path, map_location="cpu") -> dict:
    """An export.py ``model.safetensors`` + ``config.json`` as a checkpoint dict (``config``, ``model``,
    ``step``), so everything that rebuilds a model from a run's checkpoint takes it unchanged."""
    config = read_export_config(path)
    return {"format": EXPORT_FORMAT, "config": config, "model": load_checkpoint(path, map_location),
            "step": config.get("step")}


def extract_state_dict(checkpoint, prefer_ema: bool = True) -> dict:
    """The model weights inside a loaded file, whatever the wrapping.

    Accepts ``{'params_ema': sd}``, ``{'params': sd}`` (BasicSR / official Restormer, DarkIR files),
    our own format (``'ema'`` / ``'model'``), ``{'state_dict': sd}`` and a bare state_dict. EMA
    weights are preferred when present unless ``prefer_ema=False``. Strips ``module.`` (DataParallel)
    and ``_orig_mod.`` (torch.compile) prefixes.
    """
    if not isinstance(checkpoint, dict):
        raise CheckpointError(f"expected a dict of weights, got {type(checkpoint).__name__}")
    keys = WEIGHT_KEYS if prefer_ema else tuple(k for k in WEIGHT_KEYS if k not in ("params_ema", "ema"))
    state_dict = checkpoint
    for key in keys:
        if isinstance(checkpoint.get(key), dict):
            state_dict = checkpoint[key]
            break
    cleaned = {}
    for name, value in state_dict.items():
        for prefix in PREFIXES:
            while name.startswith(prefix):
                name = name[len(prefix):]
        cleaned[name] = value
    if not all(isinstance(v, torch.Tensor) for v in cleaned.values()):
        raise CheckpointError("no state_dict found: expected one of the keys "
                              f"{', '.join(WEIGHT_KEYS)} or a bare state_dict")
    return cleaned


def rename_legacy_keys(state_dict: dict, model: torch.nn.Module) -> tuple:
    """Map the keys of an older official naming onto ``model``'s; returns ``(state_dict, renamed)``.

    A model class that was published under more than one key naming for the same tensors declares
    ``checkpoint_key_renames``: ``(pattern, replacement)`` regular-expression pairs from an older name
    to the current one. A key the model lacks is renamed by the first pair that turns it into a key
    the model has; ``renamed`` lists the ``(old, new)`` pairs applied.
    """
    renames = getattr(type(model), "checkpoint_key_renames", ())
    if not renames:
        return state_dict, []
    own = model.state_dict()
    result, renamed = {}, []
    for name, value in state_dict.items():
        if name not in own:
            for pattern, replacement in renames:
                candidate = re.sub(pattern, replacement, name)
                if candidate != name and candidate in own:
                    renamed.append((name, candidate))
                    name = candidate
                    break
        result[name] = value
    return result, renamed


def load_pretrained(model: torch.nn.Module, path_or_checkpoint, strict: bool = True,
                    prefer_ema: bool = True, verbose: bool = True):
    """Load weights from a file (or an already loaded dict) into ``model``; loud about mismatches.

    ``path_or_checkpoint``: any file :func:`load_checkpoint` reads (``.pt``/``.pth``, ``.safetensors``).
    Returns ``(missing_keys, unexpected_keys)``. With ``strict=True`` any missing/unexpected key or
    shape mismatch raises :class:`CheckpointError` naming a few of them; with ``strict=False`` they
    are printed and the matching tensors are loaded. Keys of an older official naming that the model
    class declares (:func:`rename_legacy_keys`) are mapped first, and the mapping is printed.
    """
    checkpoint = path_or_checkpoint
    source = "<dict>"
    if not isinstance(path_or_checkpoint, dict):
        source = str(path_or_checkpoint)
        checkpoint = load_checkpoint(path_or_checkpoint)
    state_dict = extract_state_dict(checkpoint, prefer_ema=prefer_ema)
    target = unwrap_model(model)
    state_dict, renamed = rename_legacy_keys(state_dict, target)
    if renamed:
        old, new = renamed[0]
        print(f"load_pretrained({source}): {len(renamed)} keys of an older {type(target).__name__} naming "
              f"mapped to the current one (e.g. {old} -> {new})")
    own = target.state_dict()
    missing = [k for k in own if k not in state_dict]
    unexpected = [k for k in state_dict if k not in own]
    mismatched = [f"{k} {tuple(state_dict[k].shape)} vs model {tuple(own[k].shape)}"
                  for k in own if k in state_dict and state_dict[k].shape != own[k].shape]
    problems = []
    for label, names in (("missing", missing), ("unexpected", unexpected), ("shape mismatch", mismatched)):
        if names:
            problems.append(f"{len(names)} {label} (e.g. {', '.join(names[:3])})")
    if problems and strict:
        raise CheckpointError(f"weights in {source} do not fit {type(target).__name__}: " + "; ".join(problems))
    if problems and verbose:
        print(f"load_pretrained({source}): " + "; ".join(problems))
    compatible = {k: v for k, v in state_dict.items() if k in own and v.shape == own[k].shape}
    target.load_state_dict(compatible, strict=False)
    return missing, unexpected


def load_pretrained_expanding(model: torch.nn.Module, path, zero_init_extra_channels: bool = True,
                              key: str = INPUT_CONV_KEY):
    """Load RGB (or same-width) pretrained weights from ``path`` into ``model``, widening its input convolution.

    Files whose ``key`` weight has fewer input channels than the model's get it expanded by
    :func:`models.expand.expand_to_model`: zeros for the extra channels with ``zero_init_extra_channels``
    (the model starts out computing exactly the pretrained output), else the model's own fresh
    random initialisation for them. Every other weight must fit exactly (strict loading, as
    :func:`load_pretrained`). Returns ``load_pretrained``'s (missing, unexpected).
    """
    state_dict = extract_state_dict(load_checkpoint(path))
    expanded = expand_to_model(unwrap_model(model), state_dict, zero_init_extra_channels, key)
    if expanded is not state_dict:
        init = "zeros" if zero_init_extra_channels else "random"
        print(f"pretrained {path}: {key} expanded from {state_dict[key].shape[1]} to {expanded[key].shape[1]} "
              f"input channels ({init} for the extra ones)")
    try:
        return load_pretrained(model, expanded, strict=True)
    except CheckpointError as error:
        raise CheckpointError(f"--pretrained {path}: {error}") from None


def load_pretrained_restormer(model: torch.nn.Module, path_or_checkpoint) -> None:
    """Restormer weights (official ``params``/``params_ema`` files, a Restormer checkpoint of this
    codebase, or such a dict already loaded) into a ``models.zero_conv.ZeroConvRestormer``: its
    locked model and trainable copy, through ``load_restormer_state_dict``. Raises
    :class:`CheckpointError` naming what does not fit."""
    checkpoint = path_or_checkpoint if isinstance(path_or_checkpoint, dict) else load_checkpoint(path_or_checkpoint)
    zero_conv = unwrap_model(model)
    try:
        zero_conv.load_restormer_state_dict(extract_state_dict(checkpoint))
    except RuntimeError:
        # load_pretrained names the missing, unexpected and mismatched weights (strict: it raises).
        load_pretrained(zero_conv.locked, path_or_checkpoint, strict=True)
        raise
