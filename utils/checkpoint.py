"""The one checkpoint format, and tolerant-but-loud weight loading.

A training checkpoint is a dict::

    {'format': 'rehdr-checkpoint-v1', 'step': int, 'config': dict, 'model': state_dict,
     'ema': state_dict | None, 'optimizer': ..., 'scheduler': ..., 'scaler': ..., 'rng': {...},
     'extra': dict}

written atomically (temporary file + ``os.replace``), so an interruption never leaves a half-written
``last.pt``. ``config['model']`` holds the model's class path and constructor arguments, so
``enhance.py`` can rebuild any model of the library from the file alone.
"""
import importlib
import random
from pathlib import Path

import numpy as np
import torch

from data.io import atomic_destination

CHECKPOINT_FORMAT = "rehdr-checkpoint-v1"
# Keys under which published checkpoints keep their weights, in order of preference.
WEIGHT_KEYS = ("params_ema", "params", "ema", "model", "state_dict")
PREFIXES = ("module.", "_orig_mod.")


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
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
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


def load_checkpoint(path, map_location="cpu") -> dict:
    """Read any checkpoint file (ours or published), with a one-line error if missing or unreadable."""
    path = Path(path)
    if path.is_dir():
        path = path / "last.pt"
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        return torch.load(path, map_location=map_location, weights_only=False)
    except Exception as error:  # torch raises several types for truncated/corrupt files
        raise CheckpointError(f"cannot read checkpoint {path}: {type(error).__name__}: {error}") from error


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


def load_pretrained(model: torch.nn.Module, path_or_checkpoint, strict: bool = True,
                    prefer_ema: bool = True, verbose: bool = True):
    """Load weights from a file (or an already loaded dict) into ``model``; loud about mismatches.

    Returns ``(missing_keys, unexpected_keys)``. With ``strict=True`` any missing/unexpected key or
    shape mismatch raises :class:`CheckpointError` naming a few of them; with ``strict=False`` they
    are printed and the matching tensors are loaded.
    """
    checkpoint = path_or_checkpoint
    source = "<dict>"
    if not isinstance(path_or_checkpoint, dict):
        source = str(path_or_checkpoint)
        checkpoint = load_checkpoint(path_or_checkpoint)
    state_dict = extract_state_dict(checkpoint, prefer_ema=prefer_ema)
    target = unwrap_model(model)
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
