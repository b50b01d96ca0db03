"""A configurable preprocessing pipeline for the as-shot photo, the same at training and inference time.

A pipeline is written on the command line as steps separated by commas, each ``name`` or
``name:key=value:key=value``::

    --preprocess "grayworld,denoise:method=bilateral:strength=8,resize:max_side=2048"

and stored in a run's config as the parsed list of steps, every parameter filled in, e.g.
``[{"name": "grayworld", "strength": 1.0, "max_gain": 2.0}, ...]``. Training applies it in the
DataLoader workers (:class:`PreprocessedDataset`), enhancing applies it to the photo
(``apply_pipeline(config['preprocess'], rgb)``): one implementation, so the model sees the same
input in both. Steps run on whole images before any crop, as they do at inference.

Steps (photometric ones change the input only; the targets are the editor's and stay untouched):

- ``grayworld`` (photometric): gray-world white balance. Each channel is scaled so the channel means
  become equal (to their average): ``gain_c = mean / mean_c``, clamped to [1/max_gain, max_gain]
  (a photo of a red wall is not a colour cast to remove completely), blended as
  ``1 + strength (gain_c - 1)``. Params: ``strength`` in [0, 1] (1.0), ``max_gain`` >= 1 (2.0).
- ``denoise`` (photometric): ``method=bilateral`` (default) OpenCV's bilateral filter (5x5, colour
  sigma ``strength`` in 8-bit levels, default 10, spatial sigma 2 pixels; ~0.3 s per 7 MP photo), or
  ``method=nlmeans`` OpenCV's non-local means (``fastNlMeansDenoising`` on 16-bit RGB, L1 patch
  distance, 7x7 patches, 21x21 search; h = ``strength`` in 8-bit levels, default 3): stronger, but
  ~15 s per 7 MP photo on one core, paid every time a worker decodes the photo.
- ``resize`` (geometric): downscale (area interpolation) so the longer side is at most ``max_side``
  pixels (required); never upscales. Geometric steps apply to input *and* target in training, so
  the pair stays aligned; at inference the enhanced photo comes out at the reduced size.
"""
from typing import Callable, NamedTuple

import cv2
import numpy as np

from .dataset import PairedDataset
from .io import pixels_to_float

FLAG = "--preprocess"
DENOISE_METHODS = ("bilateral", "nlmeans")
DENOISE_DEFAULT_STRENGTH = {"bilateral": 10.0, "nlmeans": 3.0}
BILATERAL_DIAMETER, BILATERAL_SPATIAL_SIGMA = 5, 2.0
NLMEANS_TEMPLATE, NLMEANS_SEARCH = 7, 21  # OpenCV's recommended window sizes


def gray_world(rgb: np.ndarray, strength: float = 1.0, max_gain: float = 2.0) -> np.ndarray:
    """Gray-world white balance of an HxWx3 float image (see the module docstring)."""
    channel_means = np.array(cv2.mean(rgb)[:3])  # float64 accumulation, ~25x faster than numpy's
    gains = channel_means.mean() / np.maximum(channel_means, 1e-6)
    gains = 1.0 + strength * (np.clip(gains, 1.0 / max_gain, max_gain) - 1.0)
    balanced = rgb * gains.astype(np.float32)
    return np.clip(balanced, 0.0, 1.0, out=balanced)


def denoise(rgb: np.ndarray, method: str = "bilateral", strength: float = None) -> np.ndarray:
    """Denoise an HxWx3 float image with OpenCV (see the module docstring)."""
    strength = DENOISE_DEFAULT_STRENGTH[method] if strength is None else strength
    if method == "bilateral":
        return np.clip(cv2.bilateralFilter(rgb, BILATERAL_DIAMETER, strength / 255.0, BILATERAL_SPATIAL_SIGMA),
                       0.0, 1.0)
    # 16-bit with the L1 patch distance (OpenCV's only 16-bit mode) on the RGB channels jointly:
    # unlike fastNlMeansDenoisingColored, no 8-bit quantisation and no 8-bit CIELAB round trip, which
    # alone shifts a flat colour by up to two levels.
    sixteen_bit = np.clip(rgb * 65535.0 + 0.5, 0, 65535).astype(np.uint16)
    denoised = cv2.fastNlMeansDenoising(sixteen_bit, h=[strength * 257.0], templateWindowSize=NLMEANS_TEMPLATE,
                                        searchWindowSize=NLMEANS_SEARCH, normType=cv2.NORM_L1)
    return denoised.astype(np.float32) / np.float32(65535.0)


def resize_max_side(rgb: np.ndarray, max_side: int) -> np.ndarray:
    """Downscale so that max(height, width) <= max_side (area interpolation); smaller images unchanged."""
    height, width = rgb.shape[:2]
    if max(height, width) <= max_side:
        return rgb
    scale = max_side / max(height, width)
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    return cv2.resize(rgb, size, interpolation=cv2.INTER_AREA)


def _number(low, high, integer=False):
    """A converter from text or number to a float (int) in [low, high], or raise ValueError."""
    def convert(value):
        number = (int if integer else float)(value)
        if not low <= number <= high:
            raise ValueError(f"must be in [{low}, {high}]")
        return number
    return convert


def _choice(*choices):
    def convert(value):
        if value not in choices:
            raise ValueError(f"must be one of {', '.join(choices)}")
        return value
    return convert


class StepKind(NamedTuple):
    function: Callable
    geometric: bool  # applied to the target too (in training), so the pair stays aligned
    params: dict  # name -> (converter, default); a default of ... marks a required parameter


STEPS = {
    "grayworld": StepKind(gray_world, False, {"strength": (_number(0.0, 1.0), 1.0),
                                              "max_gain": (_number(1.0, float("inf")), 2.0)}),
    "denoise": StepKind(denoise, False, {"method": (_choice(*DENOISE_METHODS), "bilateral"),
                                         "strength": (_number(0.0, 255.0), None)}),
    "resize": StepKind(resize_max_side, True, {"max_side": (_number(1, 1 << 20, integer=True), ...)}),
}


def normalize_step(step: dict) -> dict:
    """Validate one step ``{'name': ..., param: value}`` and fill in its defaults; raises ValueError."""
    if not isinstance(step, dict) or "name" not in step:
        raise ValueError(f"{FLAG}: a step must be a dict with a 'name', got {step!r}")
    name = step["name"]
    if name not in STEPS:
        raise ValueError(f"{FLAG}: unknown step {name!r}; accepted: {', '.join(STEPS)}")
    params = STEPS[name].params
    unknown = sorted(set(step) - {"name"} - set(params))
    if unknown:
        raise ValueError(f"{FLAG}: step {name!r} has no parameter {unknown[0]!r}; accepted: {', '.join(params)}")
    normalized = {"name": name}
    for param, (convert, default) in params.items():
        if param not in step:
            if default is ...:
                raise ValueError(f"{FLAG}: step {name!r} needs {param}=..., e.g. {name}:{param}=1024")
            value = default
        else:
            try:
                value = convert(step[param])
            except (TypeError, ValueError) as error:
                raise ValueError(f"{FLAG}: {name}:{param}={step[param]} is invalid: {error}") from None
        normalized[param] = value
    if name == "denoise" and normalized["strength"] is None:
        normalized["strength"] = DENOISE_DEFAULT_STRENGTH[normalized["method"]]
    return normalized


def parse_pipeline(spec: str) -> list:
    """``"name:key=value:...,name,..."`` -> the list of normalised steps; ``""`` or ``"none"`` -> []."""
    spec = spec.strip()
    if spec in ("", "none"):
        return []
    steps = []
    for item in spec.split(","):
        name, *assignments = item.strip().split(":")
        step = {"name": name.strip()}
        for assignment in assignments:
            key, separator, value = assignment.partition("=")
            if not separator or not key.strip():
                raise ValueError(f"{FLAG}: expected key=value in {item.strip()!r}, got {assignment!r}")
            step[key.strip()] = value.strip()
        steps.append(normalize_step(step))
    return steps


def _steps(steps) -> list:
    return parse_pipeline(steps) if isinstance(steps, str) else [normalize_step(step) for step in steps]


def _run(step: dict, rgb: np.ndarray) -> np.ndarray:
    function = STEPS[step["name"]].function
    return function(rgb, **{k: v for k, v in step.items() if k != "name"}).astype(np.float32, copy=False)


def apply_pipeline(steps, rgb: np.ndarray) -> np.ndarray:
    """Apply a pipeline (a list of steps as stored in a config, or a spec string) to an HxWx3 float32
    RGB photo in [0, 1]; returns a new float32 array in [0, 1]. The inference-time entry point."""
    rgb = np.asarray(rgb, dtype=np.float32)
    for step in _steps(steps):
        rgb = _run(step, rgb)
    return rgb


def apply_pipeline_pair(steps, inp: np.ndarray, target: np.ndarray):
    """The training-time counterpart of :func:`apply_pipeline`: the input goes through every step
    (so it equals ``apply_pipeline(steps, inp)``), the target through the geometric ones only."""
    inp, target = np.asarray(inp, dtype=np.float32), np.asarray(target, dtype=np.float32)
    for step in _steps(steps):
        inp = _run(step, inp)
        if STEPS[step["name"]].geometric:
            target = _run(step, target)
    return inp, target


class PreprocessedDataset(PairedDataset):
    """A :class:`data.dataset.PairedDataset` whose pairs go through a pipeline as they are decoded
    (in the DataLoader workers, on whole images, before the crop; with ``cache`` the decoded pixels
    come from the pixel cache and the pipeline runs on them for each sample)."""

    def __init__(self, steps, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.steps = _steps(steps)

    def _load(self, index):
        images = {key: pixels_to_float(image) for key, image in super()._load(index).items()}
        images["input"], images["target"] = apply_pipeline_pair(self.steps, images["input"], images["target"])
        return images


def preprocessed(dataset: PairedDataset, steps) -> PreprocessedDataset:
    """The same pairs, crop, augmentation and caching as ``dataset``, with the pipeline applied."""
    return PreprocessedDataset(steps, dataset.pairs, crop=dataset.crop, augment=dataset.augment,
                               center_crop=dataset.center_crop, cache=dataset.cache)
