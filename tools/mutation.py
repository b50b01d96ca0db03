"""Mutation testing of the core modules, and their kill rate per module.

    python tools/mutation.py                        # every core module of setup.cfg [mutmut], smallest first
    python tools/mutation.py utils/metrics.py losses  # some of them (a file, or a folder of them)
    python tools/mutation.py --report               # only print the table of the last runs

Runs mutmut (a dev-only dependency: pip install -r requirements-dev.txt) one module at a time, each
under a wall-clock --timeout, in the repository root; mutmut copies the code to mutants/, puts one
small bug at a time into a function and runs the tests that call that function (recorded on the
first run). A mutant is killed when a test fails; one that survives is a bug the suite would let
through. A mutant whose tests run past mutmut's time limit is a timeout, left out of the kill rate.
mutmut runs each mutant's tests in a child forked from a process that has run torch; with more than one
OpenMP thread such a child hangs in the thread pool it inherited (libgomp is not fork-safe), so mutmut
runs here with one thread (OMP_NUM_THREADS=1), else most mutants of torch code end as timeouts. A module
tested before gets only its mutants that were not killed (survivors and timeouts) retried, unless
--fresh; mutmut itself re-tests the functions whose code changed. Print the survivors with --survivors,
and inspect one with `mutmut show NAME`. The kill rate leaves out the reviewed survivors listed in
EQUIVALENT (no observable difference) and the survivors that change only argparse's display text (a flag's
help= or metavar=, found by comparing syntax trees).
"""
import argparse
import ast
import configparser
import importlib.util
import json
import os
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# Lines of mutmut's output shown when it fails (the test that failed and its traceback end)
MUTMUT_LOG_LINES = 30
KILLED = {1: "killed", 3: "killed", 24: "timeout", -24: "timeout", 152: "timeout", 255: "timeout", 36: "timeout"}
SURVIVED = {0: "survived", 5: "no tests", 33: "no tests"}
# Survivors that behave exactly like the original (reviewed by hand with `mutmut show`); the kill rate
# leaves them out. Mutant numbers change when a function's code changes: review again then.
EQUIVALENT = {
    "data.pairs.x__is_image__mutmut_6":
        "both callers drop hidden names first (_visible_children, the hidden-part check): _is_image's never decides",
    "data.pairs.x__manifest_pairs__mutmut_6": 'encoding "UTF-8" is "utf-8": codec names are case-insensitive',
    "data.pairs.x_resolve_datasets_pairs__mutmut_9": 'dropping flag="--data": discover_pairs\' default is "--data"',
    **{f"utils.training.xǁTrainStepǁ__call____mutmut_{n}": "also dividing the loss by grad_accum == 1: loss / 1 "
       "is the loss exactly" for n in (3, 5)},
    "utils.training.xǁTrainStepǁ__call____mutmut_21":
        "also merging the micro-batch marks when grad_accum == 1: max(0, bad) is bad, and the reset keeps them 0",
    "utils.training.xǁTrainStepǁ__call____mutmut_40": 'float("INF") is float("inf")',
    **{f"utils.training.xǁTrainStepǁ__call____mutmut_{n}": "clip_grad_norm_'s foreach only picks the kernel (one "
       "launch for all tensors or one each): the same norm and clipped gradients" for n in (44, 47, 48)},
    "utils.training.x__stateful__mutmut_2": "unwrap_model of a non-module stateful object (a TrainStep, an optimizer) "
        "returns it as it is: they have no .module or ._orig_mod",
    # the lr scheduler calls lr_at from step 0, and every period list starts at 0
    **{f"utils.training.x_cosine_restarts__mutmut_{n}": "next()'s default: some period always starts at or before "
       "the step (the first starts at 0)" for n in (23, 25, 29)},
    "utils.training.x_cosine_restarts__mutmut_1": "warm-up default 1 instead of 0: a 1-step warm-up scales step 0 by "
        "(0 + 1) / 1, i.e. not at all",
    "utils.training.x_cosine_restarts__mutmut_62": "no warm-up factor when warmup_steps == 1: it would be "
        "min(1, (step + 1) / 1) = 1",
    "utils.training.xǁEMAǁ__init____mutmut_16": 'getattr(module, "track_running_stats", None): None is falsy like False',
    "utils.training.xǁEMAǁ__init____mutmut_23": "named_buffers(recurse=None): None is falsy like False",
    "utils.training.xǁEMAǁ__init____mutmut_24":
        "named_buffers(recurse=True) of a normalisation layer: those (the modules with track_running_stats) have no "
        "submodules",
    "utils.training.x_make_grad_scaler__mutmut_1":
        "GradScaler(None): the scaler reads its device only to disable itself when CUDA is asked for and missing",
    **{f"utils.training.xǁTrainingStateǁresume__mutmut_{n}": 'checkpoint.get("extra") without a default: every '
       'checkpoint writer (save_checkpoint, the sharded and DeepSpeed states) stores "extra"' for n in (32, 34)},
    "utils.checkpoint.x_rng_state__mutmut_10": "numpy's key as float64 instead of int64: MT19937 key words are below "
        "2^32, float64 holds them exactly and set_rng_state casts them back to uint32",
    "utils.checkpoint.x_set_rng_state__mutmut_8": "np.asarray of a CPU tensor key is its .numpy(): the same array",
    "utils.checkpoint.x_set_rng_state__mutmut_12": "np.random.set_state casts the key to uint32 itself",
    "utils.checkpoint.x_load_pretrained__mutmut_67": "load_state_dict(strict=None): None is falsy like False",
    **{name: "dropping strict=True: load_pretrained's strict defaults to True" for name in (
        "utils.checkpoint.x_load_pretrained_expanding__mutmut_31", "utils.checkpoint.x_load_pretrained_restormer__mutmut_14")},
    "utils.metrics.x_masked_psnr__mutmut_15": "mask.shape[+2:] of a mask already checked to be 4-D is shape[-2:]",
    "utils.metrics.x_masked_psnr__mutmut_18": "pred.shape[+2:] of a 4-D (N, C, H, W) prediction is shape[-2:]",
    "utils.metrics.x_masked_psnr__mutmut_23": "the same pred.shape[+2:] in the error message",
    "utils.metrics.x_masked_psnr__mutmut_71": 'float("NAN") is float("nan")',
    "losses.lpips.x_add_lpips_args__mutmut_5": "dropping default=None: argparse's default is None",
    "losses.perceptual.x_add_vgg_args__mutmut_5": "dropping default=None: argparse's default is None",
    "losses.illumination.xǁIlluminationConsistencyLossǁforward__mutmut_10":
        "autocast on around elementwise maths, log and exp: none of them runs in lower precision",
    "losses.illumination.xǁIlluminationConsistencyLossǁforward__mutmut_11":
        "autocast on around elementwise maths, log and exp: none of them runs in lower precision",
    "losses.illumination.xǁIlluminationConsistencyLossǁforward__mutmut_38": "diff over dim +2 of a 4-D map is dim -2",
    "losses.side_output.xǁSideOutputLossǁforward__mutmut_8": "side.shape[+2:] of a 4-D side output is shape[-2:]",
    "losses.edge.xǁEdgeLossǁ__init____mutmut_19": "persistent=None is falsy: the kernels stay out of the state dict",
    # (x - min) / max(max - min, eps) lies in [0, 1] exactly in IEEE arithmetic (rounding is monotone): the
    # clamp(0, 1) after it never changes a value, so neither does dropping or widening either bound
    **{f"losses.depth_maps.x_normalize_depth__mutmut_{n}": "clamp(0.0, 1.0) of a min-max ratio already in [0, 1]"
       for n in (30, 31, 33, 39)},
    "losses.frequency.xǁFocalFrequencyLossǁforward__mutmut_4":
        "autocast on around fft2 of an fp32 difference: no autocast op list (CPU, CUDA) casts fft, it stays fp32",
    "losses.frequency.xǁFocalFrequencyLossǁforward__mutmut_5":
        "autocast on around fft2 of an fp32 difference: no autocast op list (CPU, CUDA) casts fft, it stays fp32",
    "losses.frequency.xǁFocalFrequencyLossǁforward__mutmut_27": "amax over dims (+2, -1) of a 4-D spectrum is (-2, -1)",
    "losses.lab.xǁMultiScaleColorLossǁforward__mutmut_8":
        "scale >= 1 also pools at scale 1: a 1 x 1 average pool is the identity",
    "losses.luminance_attention.x_luminance_attention_maps__mutmut_8":
        "centres viewed (K, 1, 1) broadcast against the (N, 1, H, W) luma exactly as (1, K, 1, 1)",
    "losses.luminance_attention.xǁLuminanceAttentionLossǁ__init____mutmut_7":
        "persistent=None is falsy: the centres stay out of the state dict",
    "losses.luminance_attention.xǁLuminanceAttentionLossǁ__init____mutmut_17":
        "persistent=None is falsy: the zone weights stay out of the state dict",
    # saturation_difference takes the HSV of the same images (its contract; HSVLoss passes them) to
    # save recomputing it: dropping them recomputes the same values
    **{name: "recomputes rgb_to_hsv of the same images instead of reusing it: the same values" for name in (
        "losses.color.x_saturation_difference__mutmut_10", "losses.color.x_saturation_difference__mutmut_15",
        "losses.color.xǁHSVLossǁforward__mutmut_12", "losses.color.xǁHSVLossǁforward__mutmut_13",
        "losses.color.xǁHSVLossǁforward__mutmut_18")},
    **{f"losses.zones.xǁAdaptiveZoneLossǁ__init____mutmut_{n}": "persistent=None is falsy: the buffer stays out of "
       "the state dict" for n in (17, 31)},
    "losses.lpips.xǁLPIPSLossǁtrain__mutmut_1": "train() ignores its mode (always eval): its default does not matter",
    "losses.lpips.xǁLPIPSLossǁ__init____mutmut_8":
        "no stdout redirect: lpips.LPIPS(verbose=False) prints nothing anyway",
    "losses.lpips.xǁLPIPSLossǁ__init____mutmut_19": "verbose=None: what lpips prints goes to the redirected stdout",
    "losses.lpips.xǁLPIPSLossǁ__init____mutmut_23":
        "verbose left at True: what lpips prints goes to the redirected stdout",
    "losses.lpips.xǁLPIPSLossǁ__init____mutmut_26": "verbose=True: what lpips prints goes to the redirected stdout",
    "losses.lpips.xǁLPIPSLossǁ__init____mutmut_12":
        "ignoring every warning category: building lpips.LPIPS warns only with UserWarning (torchvision's)",
    "losses.lpips.xǁLPIPSLossǁ__init____mutmut_20": "pretrained=True is lpips.LPIPS's default",
    "losses.lpips.xǁLPIPSLossǁ_load_backbone__mutmut_9": "weights_only=None: torch >= 2.6 loads with weights_only=True",
    "losses.lpips.xǁLPIPSLossǁ_load_backbone__mutmut_12": "no weights_only: torch >= 2.6 loads with weights_only=True",
    "losses.perceptual.x_build_vgg19_features__mutmut_3": "batch_norm=None is falsy: no batch norm, as False",
    "losses.perceptual.x_build_vgg19_features__mutmut_5": "batch_norm=False is make_layers' default",
    "losses.perceptual.x_build_vgg19_features__mutmut_34":
        "weights_only=None: torch >= 2.6 loads with weights_only=True",
    "losses.perceptual.x_build_vgg19_features__mutmut_37": "no weights_only: torch >= 2.6 loads with weights_only=True",
    "losses.perceptual.xǁVGG19Featuresǁ__init____mutmut_18": "ReLU inplace=None is falsy: not in place, as False",
    "losses.perceptual.xǁVGG19Featuresǁ__init____mutmut_23":
        "persistent=None is falsy: the mean stays out of the state dict",
    "losses.perceptual.xǁVGG19Featuresǁ__init____mutmut_45":
        "persistent=None is falsy: the std stays out of the state dict",
    "losses.perceptual.xǁVGG19Featuresǁ__init____mutmut_33":
        "a (3, 1, 1) mean broadcasts against (N, 3, H, W) as (1, 3, 1, 1)",
    "losses.perceptual.xǁVGG19Featuresǁ__init____mutmut_55":
        "a (3, 1, 1) std broadcasts against (N, 3, H, W) as (1, 3, 1, 1)",
    "losses.perceptual.xǁVGG19Featuresǁtrain__mutmut_1":
        "train() ignores its mode (always eval): its default does not matter",
    "models.padding.x_pad_to_multiple__mutmut_4": "image.shape[+2:] of a 4-D (N, C, H, W) image is shape[-2:]",
    "utils.tiling.x__tile_starts__mutmut_1": "length == tile: range(0, 0, stride) is empty, so the starts are [0] too",
    "utils.tiling.x__blend_ramp__mutmut_11": "overlap 0 (the only case with rise 0): the ramps write empty slices",
    "utils.tiling.x__blend_ramp__mutmut_12":
        "overlap >= 0: at overlap 0 the rise is 0, so the ramp is skipped as before",
    "utils.tiling.x__blend_ramp__mutmut_14":
        "rise >= 0: with overlap > 0 the rise, overlap - overlap // 4, is at least 1",
    "utils.tiling.x__blend_ramp__mutmut_21": "an int64 arange + 0.5 is float32 (the default dtype), as asked",
    "utils.tiling.x__blend_ramp__mutmut_24": "an int64 arange + 0.5 is float32 (the default dtype), as asked",
    "losses.histogram.x_soft_histogram__mutmut_60":
        "one more kernel offset, reach + 1 bins away: beyond sigma, where the triangular kernel is 0",
    "losses.ssim.x_ssim__mutmut_8": "pred.shape[+2] of a 4-D (N, C, H, W) image is shape[-2]",
    "losses.ssim.x_ssim__mutmut_13": "pred.shape[+2:] of a 4-D image is shape[-2:] (in the error message)",
    "losses.colorspace.x_srgb_to_linear__mutmut_17":
        ">= at the threshold 0.04045: both branches of the sRGB curve give 0.0031308 there (2e-9 apart)",
    "losses.colorspace.x__lab_companding__mutmut_16":
        ">= at the threshold (6/29)^3: the cube root and the linear part are both 6/29 there",
    "losses.zone_aware.xǁZoneAwareLossǁ__init____mutmut_18":
        "persistent=None is falsy: the zone weights stay out of the state dict",
    "losses.bright_color.xǁBrightHistogramLossǁforward__mutmut_9":
        "weights (N, H, 1, W) instead of (N, 1, H, W): soft_histogram flattens them per image in the same order",
    "utils.checkpoint.x_refused_globals__mutmut_4":
        "names = None instead of []: both are falsy, the only test",
    "utils.checkpoint.x_rename_legacy_keys__mutmut_4":
        "getattr default None instead of (): both are falsy, the only test",
    "utils.checkpoint.x_read_sharded_weights__mutmut_26":
        "the filter ignores every warning of dcp.load, not one: it gives no other in one process",
    **{f"utils.checkpoint.x_read_sharded_weights__mutmut_{n}":
       "no_dist None / False / dropped: without a process group dcp.load falls back to one process "
       "(its warning is the one filtered)"
       for n in (33, 36, 38)},
    "models.windows.x__region_ids__mutmut_4":
        "region 1 becomes 0: a window holds region 0 alone, or 1 and 2, so the ids still differ where"
        " they meet",
    "models.windows.x__region_ids__mutmut_8":
        "region id 3 instead of 2: still distinct from 0 and 1",
    "models.windows.x_shifted_window_mask__mutmut_16":
        "rows*3 - cols still gives each (row, col) region pair its own id",
    "models.windows.x_shifted_window_mask__mutmut_17":
        "rows/3 + cols still gives each (row, col) region pair its own id",
    "models.windows.x_shifted_window_mask__mutmut_18":
        "rows*4 + cols still gives each (row, col) region pair its own id",
    "models.windows.xǁUpsampleǁ__init____mutmut_31":
        "layers = instead of +=: the list is empty at that point",
    "models.ss2d.xǁSS2Dǁforward_core__mutmut_106":
        "2:5 on an axis of size 4 is 2:4",
    **{f"models.ss2d.xǁSS2Dǁforward_core__mutmut_{n}":
       "einsum reads upper-case subscripts like lower-case ones"
       for n in (39, 55)},
    "models.scan.x__associative_scan__mutmut_3":
        "the extra pass at step == length has an empty tail: it changes nothing",
    "models.scan.x__shift_combine__mutmut_9":
        "only the head's decays shift, and those are never read (discarded)",
    "models.scan.x_selective_scan_naive__mutmut_55":
        "a (dim, N) zero state broadcasts to (batch, dim, N) on the first step",
    "models.scan.x_selective_scan_torch__mutmut_48":
        "broadcasting prepends the missing leading 1 of A",
    **{f"models.scan.x_selective_scan_naive__mutmut_{n}":
       "autocast enabled inside: no op in there is one autocast changes (elementwise, cumprod, sums "
       "of float32 tensors)"
       for n in (7, 8)},
    **{f"models.scan.x_selective_scan_torch__mutmut_{n}":
       "autocast enabled inside: no op in there is one autocast changes (elementwise, cumprod, sums "
       "of float32 tensors)"
       for n in (28, 29)},
    **{f"models.scan.xǁ_RecomputedSegmentǁbackward__mutmut_{n}":
       "allow_unused None / False / dropped: every input that requires grad reaches y"
       for n in (16, 20, 21)},
    "utils.checkpoint.x_read_sharded_weights__mutmut_30":
        "warning filters match their message case-insensitively",
    **{f"utils.inference.x__apply_edit_at_full_size__mutmut_{n}":
       "cv2.resize's default interpolation (and the one None selects) is INTER_LINEAR"
       for n in (28, 31)},
    "utils.inference.x__apply_edit_at_full_size__mutmut_4":
        "shape[+2:] of the 4-D (1, 3, h, w) output is shape[-2:]",
    **{f"utils.inference.x_add_inference_args__mutmut_{n}":
       "the checkpoint mode is only compared with 'none' and 'required': any other default acts as "
       "'optional'"
       for n in (1, 2)},
    **{f"utils.inference.x_add_inference_args__mutmut_{n}":
       "default=None dropped: argparse's default is None"
       for n in (60, 84, 114, 125)},
    "utils.inference.x_enhancer_from_args__mutmut_39":
        "getattr default None instead of False: both are falsy",
    **{f"utils.inference.x_file_sha256__mutmut_{n}":
       "another read size (or the whole file at once): the same digest"
       for n in (13, 15, 16)},
    "utils.inference.x_freeze__mutmut_5":
        "the replacement train() ignores its mode argument",
    "utils.inference.x_load_backbone__mutmut_115":
        "getattr without a default: every Restormer-family model that passes the class check has "
        "inp_channels",
    **{f"utils.inference.x_load_backbone__mutmut_{n}":
       "module paths are lower case: 'Restormer' matches only in the class name, which both variants "
       "keep"
       for n in (44, 49)},
    "utils.inference.x_load_backbone__mutmut_84":
        "strict=True dropped: it is load_pretrained's default",
    "utils.inference.xǁNetworkModelǁfrom_checkpoint__mutmut_13":
        "strict=True dropped: it is load_pretrained's default",
    "utils.inference.xǁNetworkModelǁfrom_checkpoint__mutmut_14":
        "prefer_ema=True dropped: it is load_pretrained's default",
    **{f"utils.inference.x_load_member__mutmut_{n}":
       "OnnxModel.from_file ignores amp and sampling: the graph is fp32 and samples nothing"
       for n in (10, 12, 17)},
    "utils.inference.x_official_restormer_kwargs__mutmut_42":
        "project_in has 2 x hidden rows, so / 2 is exact, and hidden is only compared and divided",
    "utils.inference.xǁNetworkModelǁ__init____mutmut_41":
        "lcm(8, 2) == lcm(8, 1): no model without size_multiple tiles otherwise",
    **{f"utils.inference.xǁNetworkModelǁdepth__mutmut_{n}":
       "the tag only tells depth entries apart in photo_cache, which holds nothing else"
       for n in (2, 3)},
    "utils.inference.xǁTilingǁ__init____mutmut_11":
        "tiles 1-7 are refused just before (not a multiple of 8): > 1 and > 0 agree",
    "utils.inference.xǁTilingǁ__init____mutmut_16":
        "the tile is a multiple of 8 here, so tile / 2 == tile // 2",
}
# Keyword arguments whose text argparse only prints (in --help and usage lines), and the calls whose
# positional arguments are such text: a mutant that changes or drops only these changes no behaviour.
DISPLAY_KEYWORDS = {"help", "metavar", "description", "epilog", "title", "usage"}
DISPLAY_CALLS = {"add_argument_group", "add_mutually_exclusive_group"}


class _DisplayTextEraser(ast.NodeTransformer):
    """Drops argparse's display-only text from a function's syntax tree (see DISPLAY_KEYWORDS)."""

    def visit_Call(self, node):
        self.generic_visit(node)
        node.keywords = [keyword for keyword in node.keywords if keyword.arg not in DISPLAY_KEYWORDS]
        called = node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", None)
        if called in DISPLAY_CALLS:
            node.args = []
        return node


def _comparable(function: ast.AST) -> str:
    """The function's syntax without its name and argparse display text, as a string to compare."""
    function = ast.parse(ast.unparse(function)).body[0]  # a copy: the eraser edits the tree it visits
    function = _DisplayTextEraser().visit(function)
    function.name = ""
    return ast.dump(function)


def help_text_only(path: Path) -> set:
    """Names of the mutants of ``path`` that differ from their original only in argparse display text
    (a flag's help= or metavar=, a group's title): no behaviour to test. Read from mutmut's copy of the
    module in mutants/, where every mutant is a function next to its ``__mutmut_orig``."""
    source = ROOT / "mutants" / path
    if not source.is_file():
        return set()
    functions = {node.name: node for node in ast.walk(ast.parse(source.read_text()))
                 if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and "__mutmut_" in node.name}
    originals = {name.removesuffix("__mutmut_orig"): _comparable(function)
                 for name, function in functions.items() if name.endswith("__mutmut_orig")}
    module = ".".join(path.with_suffix("").parts)
    names = set()
    for name, function in functions.items():
        stem, _, number = name.rpartition("__mutmut_")
        if number != "orig" and stem in originals and _comparable(function) == originals[stem]:
            names.add(f"{module}.{name}")
    return names


def core_modules() -> list:
    """The files setup.cfg [mutmut] only_mutate names (globs expanded), smallest first."""
    config = configparser.ConfigParser()
    config.read(ROOT / "setup.cfg")
    patterns = [line for line in config.get("mutmut", "only_mutate").splitlines() if line.strip()]
    files = {path for pattern in patterns for path in ROOT.glob(pattern) if path.name != "__init__.py"}
    return sorted((path.relative_to(ROOT) for path in files), key=lambda p: ((ROOT / p).stat().st_size, str(p)))


def selected_files(names: list) -> list:
    """Core files matching the command line's files or folders (all core files when none given)."""
    core = core_modules()
    if not names:
        return core
    chosen = []
    for name in names:
        name = Path(name)
        matches = [path for path in core if path == name or name in path.parents]
        if not matches:
            sys.exit(f"error: {name} is not a core module of setup.cfg [mutmut] only_mutate")
        chosen += [path for path in matches if path not in chosen]
    return chosen


def mutant_glob(path: Path) -> str:
    """mutmut's name pattern for every mutant of one file: dotted module path, then '.*'."""
    return ".".join(path.with_suffix("").parts) + ".*"


def results(path: Path) -> dict:
    """{mutant name: exit code} of the last run on ``path`` (empty if it never ran)."""
    meta = ROOT / "mutants" / (str(path) + ".meta")
    if not meta.is_file():
        return {}
    return json.loads(meta.read_text()).get("exit_code_by_key", {})


def tally(path: Path, help_text: set) -> Counter:
    """How the mutants of ``path`` ended; ``help_text``: its survivors that change only display text."""
    counts = Counter()
    for name, code in results(path).items():
        if code in SURVIVED and name in EQUIVALENT:
            counts["equivalent"] += 1
        elif code in SURVIVED and name in help_text:
            counts["help text"] += 1
        else:
            counts[KILLED.get(code) or SURVIVED.get(code) or ("not checked" if code is None else "other")] += 1
    return counts


def verify_timeouts(path: Path, seconds: int) -> None:
    """Give each timed-out mutant of ``path`` the verdict of its tests run outside mutmut's forked runner.

    One worker process (in mutants/, as mutmut runs them) runs one pytest session per mutant, its covering
    tests fastest first with -x: a failure is a kill, a pass a survivor, a session past ``seconds`` stays
    a timeout. The code and the test files are imported once, unmutated, so a mutant of code that runs
    only at import comes out as a survivor, never as a false kill.
    """
    meta = ROOT / "mutants" / (str(path) + ".meta")
    data = json.loads(meta.read_text())
    stats = json.loads((ROOT / "mutants" / "mutmut-stats.json").read_text())
    durations = stats["duration_by_test"]
    jobs = []
    for name, code in data["exit_code_by_key"].items():
        if KILLED.get(code) == "timeout":
            tests = stats["tests_by_mangled_function_name"].get(name.rsplit("__mutmut_", 1)[0], [])
            jobs.append((name, sorted(tests, key=lambda test: durations.get(test, 0.0))))
    if not jobs:
        return
    worker = subprocess.run([sys.executable, __file__, "--verify-worker", str(seconds)], cwd=ROOT / "mutants",
                            input=json.dumps(jobs), capture_output=True, text=True, check=True)
    verdicts = json.loads(worker.stdout.splitlines()[-1])
    data["exit_code_by_key"].update(verdicts)
    meta.write_text(json.dumps(data, indent=4))
    print(f"    {path}: {len(jobs)} timeouts re-run: {sum(code == 1 for code in verdicts.values())} killed, "
          f"{sum(code == 0 for code in verdicts.values())} survived")


def verify_worker(seconds: int) -> None:
    """The worker of :func:`verify_timeouts`: jobs on stdin, ``{name: exit code}`` as the last stdout line."""
    import contextlib
    import io

    import pytest

    sys.path.insert(0, os.getcwd())  # the mutated copy, as mutmut imports it

    def hang(signum, frame):
        raise TimeoutError

    signal.signal(signal.SIGALRM, hang)
    jobs = json.loads(sys.stdin.read())
    # import the code and the test files unmutated first: module-level code runs only at this import
    os.environ["MUTANT_UNDER_TEST"] = ""
    with contextlib.redirect_stdout(io.StringIO()):
        pytest.main(["--collect-only", "-q", "-p", "no:cacheprovider", *{test for _, tests in jobs for test in tests}])
    verdicts = {}
    for name, tests in jobs:
        os.environ["MUTANT_UNDER_TEST"] = name
        signal.alarm(seconds)
        try:
            with contextlib.redirect_stdout(io.StringIO()):
                result = pytest.main(["-x", "-q", "-p", "no:cacheprovider", *tests])
            signal.alarm(0)
        except TimeoutError:
            continue
        if result in (pytest.ExitCode.OK, pytest.ExitCode.TESTS_FAILED):
            verdicts[name] = int(result)
    print(json.dumps(verdicts))


def print_table(paths: list, survivors: bool) -> None:
    """Per module: mutants, how they ended, and the kill rate: killed / (killed + survived + no tests),
    i.e. without timeouts, equivalent and help-text survivors."""
    print(f"\n{'module':<29} {'mutants':>7} {'killed':>6} {'timeout':>7} {'survived':>8} {'no tests':>8} "
          f"{'equiv.':>6} {'help':>4} {'unchecked':>9}  kill rate")
    for path in paths:
        help_text = help_text_only(path)
        counts = tally(path, help_text)
        total = sum(counts.values())
        # Timeouts stay out of the rate: no verdict (--verify-timeouts gives them one), e.g. mutants of
        # code that runs while pytest imports the test files (a loss built at module level).
        checked = counts["killed"] + counts["survived"] + counts["no tests"]
        rate = f"{100 * counts['killed'] / checked:5.1f} %" if checked else (
            "timeouts only" if counts["timeout"] else "  not run")
        print(f"{str(path):<29} {total:>7} {counts['killed']:>6} {counts['timeout']:>7} {counts['survived']:>8} "
              f"{counts['no tests']:>8} {counts['equivalent']:>6} {counts['help text']:>4} "
              f"{counts['other'] + counts['not checked']:>9}  {rate}")
        if survivors:
            for name, code in sorted(results(path).items()):
                if code in SURVIVED:
                    note = EQUIVALENT.get(name, "help text only" if name in help_text else "")
                    print(f"    {SURVIVED[code]:<9} {name}  {note}")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("modules", nargs="*", help="core files or folders (default: all, smallest first)")
    parser.add_argument("--timeout", type=int, default=1800, help="wall-clock seconds per module")
    parser.add_argument("--jobs", type=int, default=1, help="mutants tested in parallel")
    parser.add_argument("--fresh", action="store_true", help="test every mutant again, killed ones too")
    parser.add_argument("--report", action="store_true", help="only print the table of the last runs")
    parser.add_argument("--survivors", action="store_true", help="list the surviving mutants")
    parser.add_argument("--verify-timeouts", type=int, default=0, metavar="SECONDS",
                        help="re-run each timed-out mutant's tests outside mutmut, SECONDS at most per mutant")
    parser.add_argument("--verify-worker", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.verify_worker:
        verify_worker(args.verify_worker)
        return
    paths = selected_files(args.modules)
    # SIGTERM (e.g. from `timeout`) unwinds like Ctrl-C, so the mutmut session below is ended too
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    if not args.report:
        if importlib.util.find_spec("mutmut") is None:
            sys.exit("error: mutmut is not installed: pip install -r requirements-dev.txt")
        for path in paths:
            print(f"--- {path}", flush=True)
            previous = results(path)
            retry = [name for name, code in previous.items() if KILLED.get(code) != "killed"]
            if previous and not retry and not args.fresh:
                continue
            names = retry if previous and not args.fresh else [mutant_glob(path)]
            command = [sys.executable, "-m", "mutmut", "run", "--max-children", str(args.jobs), *names]
            # one OpenMP / MKL thread: mutmut's forked test workers hang in a multi-threaded pool
            environment = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
            log = ROOT / "mutants" / "mutmut-run.log"
            log.parent.mkdir(exist_ok=True)
            with open(log, "w") as output:
                # its own process group, so a timeout also ends mutmut's forked test workers
                process = subprocess.Popen(command, cwd=ROOT, stdout=output, stderr=subprocess.STDOUT,
                                           start_new_session=True, env=environment)
                try:
                    process.wait(timeout=args.timeout)
                    failed = process.returncode != 0
                except subprocess.TimeoutExpired:
                    print(f"    {path}: stopped after {args.timeout} s; the table counts the mutants tested so far")
                    failed = False
                finally:
                    # also when this tool is interrupted or terminated: mutmut runs in its own session
                    if process.poll() is None:
                        os.killpg(process.pid, signal.SIGTERM)
                        process.wait()
            if failed:
                # e.g. a covering test fails on the unmutated code, so mutmut cannot map tests to functions
                tail = "\n".join(log.read_text(errors="replace").splitlines()[-MUTMUT_LOG_LINES:])
                sys.exit(f"{tail}\nerror: mutmut failed on {path} (exit {process.returncode}); whole log: {log}")
    if args.verify_timeouts:
        for path in paths:
            verify_timeouts(path, args.verify_timeouts)
    print_table(paths, args.survivors)


if __name__ == "__main__":
    main()
