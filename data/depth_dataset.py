"""Data and network inputs for the models with extra input channels (``data.features`` specs).

Shared by ``train_midas_depth.py``, ``train_multi_feature.py`` and ``train_depth_aware.py``:

* :func:`add_feature_args` — their flags (``--depth-model``, ``--depth-cache``,
  ``--[no-]zero-init-extra-channels``);
* :func:`build_feature_datasets` — the training / validation sets for a feature spec. A spec with
  ``'depth'`` gets MiDaS / DPT depth computed **once** per image, on the full image, before training
  (with a progress bar) and cached on disk (:class:`models.depth.DepthCache`); samples then carry it
  as ``'depth'``, cropped and flipped together with the RGB (:class:`DepthPairedDataset`);
* :func:`model_inputs_for` — ``batch -> network input`` with :func:`data.features.build_inputs`, the
  call ``enhance.py`` makes too, used for training and validation alike.
"""
import argparse
import sys
from pathlib import Path

import numpy as np
import torch

from data.build import build_datasets
from data.dataset import PairedDataset
from data.features import build_inputs, needs_depth, parse_feature_spec

# --depth-model value that builds a randomly initialised tiny DPT instead of loading MiDaS weights.
TINY_RANDOM_DEPTH_MODEL = "tiny-random"
# Sub-folder of the run folder where that tiny model is saved (and found again on --resume).
TINY_RANDOM_FOLDER = "tiny_random_dpt"
# Fixed, so the tiny model of a run folder is the same whenever it has to be rebuilt.
TINY_RANDOM_SEED = 0


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


def resolve_depth_model(name_or_path: str, run_dir) -> str:
    """What ``load_depth_model`` loads and the checkpoint records as ``config['depth_model']``.

    A folder becomes its absolute path (so ``enhance.py`` finds it from anywhere); a hub id stays as
    it is. ``'tiny-random'`` saves a randomly initialised tiny DPT (``models.depth.tiny_dpt_config``)
    into ``RUN_DIR/tiny_random_dpt`` unless it is there already (a resumed run keeps its model) and
    returns that folder, so it goes through exactly the loading and caching path of real weights;
    it prints a warning, its depth being noise.
    """
    if name_or_path == TINY_RANDOM_DEPTH_MODEL:
        folder = (Path(run_dir) / TINY_RANDOM_FOLDER).resolve()
        if not (folder / "config.json").is_file():
            from models.depth import tiny_dpt_config
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


def _depth_not_precomputed(rgb):
    raise RuntimeError("a depth map is missing from the depth cache although every image's depth was "
                       "computed before training: was an image file replaced during training?")


class DepthPairedDataset(PairedDataset):
    """:class:`data.dataset.PairedDataset` whose samples also hold ``'depth'`` (1, h, w) in [0, 1].

    The depth of a pair's input image comes from ``depth_cache`` (a :class:`models.depth.DepthCache`),
    computed on the full image. It travels through PairedDataset's crop, padding and flips as a 4th
    input channel (they treat channels alike), so the depth is pixel-aligned with the RGB crop by
    construction, whatever the crop or flip, and is split off again at the end.
    ``dataset_kwargs``: PairedDataset's ``crop``, ``augment``, ``center_crop``, ``cache``.
    """

    def __init__(self, pairs, depth_cache, **dataset_kwargs):
        super().__init__(pairs, **dataset_kwargs)
        self.depth_cache = depth_cache

    @classmethod
    def like(cls, dataset: PairedDataset, depth_cache) -> "DepthPairedDataset":
        """The same pairs, crop, augmentation and caching as ``dataset``, plus depth."""
        return cls(dataset.pairs, depth_cache, crop=dataset.crop, augment=dataset.augment,
                   center_crop=dataset.center_crop, cache=dataset.cache is not None)

    def _load(self, index):
        input_image, target_image = super()._load(index)
        depth = self.depth_cache.get_or_compute(self.pairs[index].input, input_image)
        return np.concatenate([input_image, depth[..., None]], axis=2), target_image

    def __getitem__(self, key):
        sample = super().__getitem__(key)
        rgb_and_depth = sample["input"]
        sample["input"], sample["depth"] = rgb_and_depth[:3], rgb_and_depth[3:]
        return sample


def with_precomputed_depth(train_set: PairedDataset, val_set: PairedDataset, depth_cache,
                           progress: bool = True):
    """Fill ``depth_cache`` for every input image of both sets, then wrap them as DepthPairedDatasets.

    The wrapped sets read the cache only (their cache has no estimator), so the depth model never
    runs, nor is copied, in DataLoader workers, and can be freed once this returns.
    """
    depth_cache.precompute([pair.input for pair in train_set.pairs + val_set.pairs], progress=progress)
    read_only = type(depth_cache)(depth_cache.cache_dir, depth_cache.model_key, _depth_not_precomputed)
    return DepthPairedDataset.like(train_set, read_only), DepthPairedDataset.like(val_set, read_only)


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
    from models.depth import DepthCache, load_depth_model

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
