"""Plumbing of the input-feature recipes (train_midas_depth.py, train_multi_feature.py, train_depth_aware.py)
and of inference's depth: their flags, the MiDaS / DPT depth model loaded from its folder, the datasets
with cached depth, and the network input on the device.

* :func:`add_feature_args` — their flags (``--depth-model``, ``--depth-cache``,
  ``--[no-]zero-init-extra-channels``);
* :func:`load_depth_model` — a ``models.depth.DepthEstimator`` from a local ``save_pretrained`` folder
  or the local Hugging Face cache; nothing is ever downloaded at run time;
* :func:`build_feature_datasets` — the training / validation sets for a feature spec. A spec with
  ``'depth'`` gets MiDaS / DPT depth computed **once** per image, on the full image, before training
  (with a progress bar) and cached on disk (:class:`data.depth_dataset.DepthCache`); samples then carry
  it as ``'depth'``, cropped and flipped together with the RGB (:class:`data.depth_dataset.DepthPairedDataset`);
* :func:`model_inputs_for` — ``batch -> network input`` with :func:`data.features.build_inputs`, the
  call ``enhance.py`` makes too, used for training and validation alike.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path

import torch

from data.build import build_datasets
from data.depth_dataset import DepthCache, with_precomputed_depth
from data.features import build_inputs, needs_depth, parse_feature_spec
from models.depth import DPT_DEFAULT_MEAN, DPT_DEFAULT_STD, DepthEstimator, import_transformers, tiny_dpt_config

# --depth-model value that builds a randomly initialised tiny DPT instead of loading MiDaS weights.
TINY_RANDOM_DEPTH_MODEL = "tiny-random"
# Sub-folder of the run folder where that tiny model is saved (and found again on --resume).
TINY_RANDOM_FOLDER = "tiny_random_dpt"
# Fixed, so the tiny model of a run folder is the same whenever it has to be rebuilt.
TINY_RANDOM_SEED = 0


# Files that can hold DPTForDepthEstimation weights in a save_pretrained folder.
_WEIGHT_FILES = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
)


def add_feature_args(parser, depth: bool) -> None:
    """The flags of the feature scripts; ``depth=True`` adds the (required) depth model flags."""
    group = parser.add_argument_group("input features")
    group.add_argument("--zero-init-extra-channels", action=argparse.BooleanOptionalAction, default=True,
                       help="with --pretrained RGB weights: zero weights for the extra input channels, so "
                            "training starts from exactly the pretrained output (--no-zero-init-extra-channels: "
                            "random weights for them)")
    if depth:
        group.add_argument("--depth-model", required=True, metavar="PATH_OR_ID",
                           help="MiDaS/DPT depth model: a save_pretrained folder (`hf download "
                                "Intel/dpt-hybrid-midas --local-dir DIR`), a hub id already in the local "
                                f"Hugging Face cache, or '{TINY_RANDOM_DEPTH_MODEL}' (random tiny DPT, "
                                "smoke tests only)")
        group.add_argument("--depth-cache", default=None,
                           help="folder of cached depth maps (default: OUT/depth_cache); entries are keyed "
                                "by image file and model, so runs on the same data may share one")


def _missing_weights_error(name_or_path: str, reason: str) -> FileNotFoundError:
    return FileNotFoundError(
        f"depth model {name_or_path!r}: {reason}; on a machine with internet run "
        f"`hf download Intel/dpt-hybrid-midas --local-dir DIR` (or Intel/dpt-large), copy DIR here "
        f"and pass --depth-model DIR"
    )


def _resolve_model_folder(name_or_path: str) -> Path:
    """A local folder holding the model: the path itself, or the hub id's snapshot in the local cache."""
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        folder = path
    elif path.exists():
        raise _missing_weights_error(name_or_path, "is a file, expected a save_pretrained folder")
    else:
        from huggingface_hub import snapshot_download
        from huggingface_hub.errors import HFValidationError, LocalEntryNotFoundError

        try:
            folder = Path(snapshot_download(name_or_path, local_files_only=True))
        except (LocalEntryNotFoundError, HFValidationError, FileNotFoundError):
            raise _missing_weights_error(
                name_or_path, "no such folder, and not in the local Hugging Face cache"
            ) from None
    if not (folder / "config.json").is_file() or not any((folder / name).is_file() for name in _WEIGHT_FILES):
        raise _missing_weights_error(name_or_path, f"{folder} has no config.json and model weights")
    return folder


def _model_key(folder: Path) -> str:
    """Identifies the model for the depth cache: its config files and the weights' sizes and mtimes.

    Independent of where the folder lives; replacing the weights (new mtime) invalidates the cache.
    """
    digest = hashlib.sha256()
    for name in ("config.json", "preprocessor_config.json"):
        if (folder / name).is_file():
            digest.update((folder / name).read_bytes())
    for name in _WEIGHT_FILES:
        if (folder / name).is_file():
            stat = (folder / name).stat()
            digest.update(f"{name}:{stat.st_size}:{stat.st_mtime_ns}".encode())
    return digest.hexdigest()[:16]


def _normalisation(folder: Path) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """(mean, std) from the folder's image processor config if present, else DPT's defaults."""
    config_path = folder / "preprocessor_config.json"
    if not config_path.is_file():
        return DPT_DEFAULT_MEAN, DPT_DEFAULT_STD
    processor = json.loads(config_path.read_text())
    if not processor.get("do_normalize", True):
        return (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)
    mean = processor.get("image_mean", DPT_DEFAULT_MEAN)
    std = processor.get("image_std", DPT_DEFAULT_STD)
    return tuple(float(value) for value in mean), tuple(float(value) for value in std)


def load_depth_model(
    name_or_path: str, device: torch.device | str = "cpu", autocast_dtype: torch.dtype | None = None
) -> DepthEstimator:
    """Load a MiDaS / DPT depth model, never downloading; returns it wrapped in a ``models.depth.DepthEstimator``.

    name_or_path: a folder in ``save_pretrained`` format (e.g. made by
    ``hf download Intel/dpt-hybrid-midas --local-dir DIR``), or a hub id such as
    ``Intel/dpt-hybrid-midas`` that is already in the local Hugging Face cache.
    The folder's ``preprocessor_config.json``, if any, sets the normalisation.

    Raises ImportError (naming requirements-extras.txt) without ``transformers``, and a one-line
    FileNotFoundError naming ``name_or_path`` and how to provide the weights when they are not here.
    """
    transformers = import_transformers()
    folder = _resolve_model_folder(str(name_or_path))
    model = transformers.DPTForDepthEstimation.from_pretrained(str(folder), local_files_only=True)
    mean, std = _normalisation(folder)
    return DepthEstimator(
        model.to(device), mean, std, model_key=_model_key(folder), autocast_dtype=autocast_dtype
    )


def resolve_depth_model(name_or_path: str, run_dir) -> str:
    """What ``load_depth_model`` loads and the checkpoint records as ``config['depth_model']``.

    A folder becomes its absolute path (so ``enhance.py`` finds it from anywhere); a hub id stays as
    it is. ``'tiny-random'`` saves a randomly initialised tiny DPT (:func:`models.depth.tiny_dpt_config`)
    into ``RUN_DIR/tiny_random_dpt`` unless it is there already (a resumed run keeps its model) and
    returns that folder, so it goes through exactly the loading and caching path of real weights;
    it prints a warning, its depth being noise.
    """
    if name_or_path == TINY_RANDOM_DEPTH_MODEL:
        folder = (Path(run_dir) / TINY_RANDOM_FOLDER).resolve()
        if not (folder / "config.json").is_file():
            config = tiny_dpt_config()  # first: without transformers it names the requirements file
            from transformers import DPTForDepthEstimation
            with torch.random.fork_rng(devices=[]):  # leave the run's random streams untouched
                torch.manual_seed(TINY_RANDOM_SEED)
                DPTForDepthEstimation(config).save_pretrained(folder)
        print(f"WARNING: --depth-model {TINY_RANDOM_DEPTH_MODEL}: a randomly initialised tiny DPT ({folder}); "
              "its depth is noise, for smoke tests only. For real depth: hf download Intel/dpt-hybrid-midas "
              "--local-dir DIR, then --depth-model DIR", file=sys.stderr)
        return str(folder)
    path = Path(name_or_path).expanduser()
    return str(path.resolve()) if path.is_dir() else name_or_path


def build_feature_datasets(args, spec, device, run_dir):
    """``(train_set, val_set, depth_model)`` for a script with feature spec ``spec``.

    Without ``'depth'`` in the spec: :func:`data.build.build_datasets` and ``depth_model=None``.
    With it: ``args.depth_model`` is resolved (:func:`resolve_depth_model`) and loaded on ``device``
    (under ``args.amp`` autocast), every image's depth is computed into ``args.depth_cache``
    (default ``RUN_DIR/depth_cache``), and the sets become :class:`DepthPairedDataset`; the
    returned ``depth_model`` is what the checkpoint must record as ``config['depth_model']``.
    """
    train_set, val_set = build_datasets(args)
    if not needs_depth(spec):
        return train_set, val_set, None
    depth_model = resolve_depth_model(args.depth_model, run_dir)
    autocast_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(args.amp)
    estimator = load_depth_model(depth_model, device, autocast_dtype=autocast_dtype)
    cache_dir = args.depth_cache or Path(run_dir) / "depth_cache"
    train_set, val_set = with_precomputed_depth(train_set, val_set,
                                                DepthCache(cache_dir, estimator.model_key, estimator))
    print(f"depth: {depth_model}, cached in {cache_dir}")
    return train_set, val_set, depth_model


def model_inputs_for(spec, device):
    """``model_inputs(batch)``: the network input (N, 3 + len(spec), H, W) on ``device``.

    RGB is ``batch['input']``, depth (when the spec has it) ``batch['depth']``; the features are
    computed on ``device`` in float32 (outside autocast) by :func:`data.features.build_inputs`,
    exactly as at inference. Pass it to the loop and to ``RunFolder.end_step(model_inputs=...)`` so
    validation sees what training sees.
    """
    spec = parse_feature_spec(spec)
    depth_needed = needs_depth(spec)

    def model_inputs(batch):
        rgb = batch["input"].to(device, non_blocking=True)
        depth = batch["depth"].to(device, non_blocking=True) if depth_needed else None
        return build_inputs(rgb, spec, depth=depth)

    return model_inputs
