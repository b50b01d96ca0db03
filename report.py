"""Compare training runs: a results table, training curves and validation images side by side.

    python report.py runs/* --out report/
    python report.py runs/train_restormer_512_combined_loss runs/train_darkir_simple --images 4 --device cuda

Reads each run folder (config.json, metrics.jsonl, best.pt or last.pt; a folder of fold_*/ runs counts
as one run per fold; anything else is skipped with a note) and writes into --out:

- ``report.md``: one row per run, best first: script, architecture, parameters, steps, the validation
  L1 / PSNR / SSIM of its best validation (highest PSNR, the one best.pt holds), wall time (summed
  over resumed segments) and median training throughput; then the as-shot baseline (input vs target);
- ``curves.png``: training loss (log scale) and validation PSNR / SSIM / L1 against the step, every run
  on the same axes;
- ``grid_<k>_<name>.png`` for the first --images validation pairs (by name) of the first run's data
  (or --data): input | each run's output | target, and under them the absolute error against the
  target as a heat map (mean over channels; black 0, bright yellow >= 0.25), with each image's PSNR.

Figures are drawn with OpenCV, so the report needs nothing beyond the core requirements.
"""
import argparse
import json
import math
import os
import statistics
import sys
from datetime import datetime
from pathlib import Path

import cv2
import numpy as np
import torch

from data.io import read_image
from data.pairs import discover_pairs, resolve_datasets_pairs
from utils.checkpoint import CheckpointError, build_model
from utils.cli import run_cli
from utils.inference import add_inference_args, enhancer_from_args, resolve_checkpoints
from utils.logging import read_metrics

# BGR colours of the runs in every figure (colour-blind-friendly Okabe-Ito palette, then greys).
RUN_COLORS = [(178, 114, 0), (0, 94, 213), (115, 158, 0), (167, 121, 204), (233, 180, 86), (66, 228, 240),
              (0, 159, 230), (0, 0, 0), (120, 120, 120), (190, 190, 190)]
ERROR_SCALE = 0.25  # absolute error drawn at the top of the heat map's colour scale
TRAIN_METADATA = ("lr", "grad_norm", "images_per_s")
FONT = cv2.FONT_HERSHEY_SIMPLEX


class Run:
    """What a run folder says about itself (see the module docstring for the fields' meaning)."""

    def __init__(self, run_dir: Path, name: str):
        self.dir, self.name = run_dir, name
        self.config = json.loads((run_dir / "config.json").read_text()) if (run_dir / "config.json").is_file() else {}
        self.records = read_metrics(run_dir)
        self.val = [r for r in self.records if r["split"] == "val"]
        self.train = [r for r in self.records if r["split"] == "train"]
        self.identity = next((r for r in self.records if r["split"] == "identity"), None)
        self.best = max(self.val, key=lambda r: r["psnr"]) if self.val else None
        self.steps = max((r["step"] for r in self.records), default=None)
        self.checkpoint = next((run_dir / n for n in ("best.pt", "last.pt") if (run_dir / n).is_file()), None)

    @property
    def script(self) -> str:
        return self.config.get("script", "-")

    @property
    def model_spec(self):
        return self.config.get("model")

    def architecture(self) -> str:
        spec = self.model_spec
        if not spec:
            return "-"
        kwargs = spec.get("kwargs", {})
        text = spec["class"].rpartition(".")[2]
        size = next((f"{key} {kwargs[key]}" for key in ("dim", "width", "n_feat") if key in kwargs), None)
        channels = kwargs.get("inp_channels", kwargs.get("in_channels", 3))
        refiner = self.config.get("refiner")
        if refiner:  # a refiner's input is its backbone's output + the photo: name the backbone instead
            return f"{text} ({size}) on frozen {Path(refiner['backbone']).parent.name}"
        details = [detail for detail in (size, f"{channels}-channel input" if channels != 3 else None) if detail]
        return f"{text} ({', '.join(details)})" if details else text

    def parameters(self):
        """Parameter count of the model the config describes (built on the meta device: no memory)."""
        if not self.model_spec:
            return None
        with torch.device("meta"):
            return sum(parameter.numel() for parameter in build_model(self.model_spec).parameters())

    def wall_seconds(self):
        """Training wall time: the logged clock restarts at each resume, so segments are summed."""
        total, segment_end, previous = 0.0, 0.0, -1.0
        for record in self.records:
            if record["time"] < previous:
                total += segment_end
            segment_end = previous = record["time"]
        return total + segment_end if self.records else None

    def throughput(self):
        values = [r["images_per_s"] for r in self.train if "images_per_s" in r]
        return statistics.median(values) if values else None

    def loss_key(self):
        keys = [k for r in self.train for k in r if k not in ("step", "split", "time", *TRAIN_METADATA)]
        return "loss" if "loss" in keys else (keys[0] if keys else None)


def find_runs(paths) -> list:
    """Run folders among ``paths`` (fold_*/ runs expanded), named by their path below the common parent."""
    run_dirs = []
    for path in map(Path, paths):
        if (path / "metrics.jsonl").is_file() or (path / "config.json").is_file():
            run_dirs.append(path)
        elif path.is_dir() and any(path.glob("fold_*/metrics.jsonl")):
            run_dirs.extend(sorted(fold.parent for fold in path.glob("fold_*/metrics.jsonl")))
        else:
            print(f"skipped {path}: not a run folder (no config.json or metrics.jsonl)")
    if not run_dirs:
        raise ValueError("no run folders given: pass folders holding config.json / metrics.jsonl, e.g. runs/*")
    resolved = [d.resolve() for d in run_dirs]
    parent = Path(os.path.commonpath(resolved)) if len(resolved) > 1 else resolved[0].parent
    return [Run(d, d.relative_to(parent).as_posix() or d.name) for d in resolved]


def sort_best_first(runs: list) -> list:
    return sorted(runs, key=lambda run: -run.best["psnr"] if run.best else math.inf)


def _duration(seconds) -> str:
    if seconds is None:
        return "-"
    minutes, secs = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h {minutes:02d}m" if hours else (f"{minutes}m {secs:02d}s" if minutes else f"{secs}s")


def _count(number) -> str:
    if number is None:
        return "-"
    return f"{number / 1e6:.2f}M" if number >= 1e5 else f"{number:,}"


def results_table(runs: list) -> str:
    """The catalog-style markdown table, one row per run in the given order."""
    lines = ["| # | Run | Script | Architecture | Params | Steps | L1 | PSNR (dB) | SSIM | Wall time | Train img/s |",
             "|---|-----|--------|--------------|--------|-------|----|-----------|------|-----------|-------------|"]
    for rank, run in enumerate(runs, start=1):
        best = run.best
        scores = (f"{best['l1']:.4f}", f"{best['psnr']:.2f}", f"{best['ssim']:.4f}") if best else ("-", "-", "-")
        throughput = run.throughput()
        lines.append("| " + " | ".join([
            str(rank), run.name, f"`{run.script}`", run.architecture(), _count(run.parameters()),
            "-" if run.steps is None else f"{run.steps:,}", *scores, _duration(run.wall_seconds()),
            "-" if throughput is None else f"{throughput:.1f}"]) + " |")
    return "\n".join(lines)


def _ticks(low: float, high: float, count: int = 6) -> list:
    """Round tick values (steps of 1, 2, 2.5 or 5 times a power of ten) inside [low, high]."""
    raw_step = (high - low) / (count - 1)
    power = 10 ** math.floor(math.log10(raw_step))
    step = next(multiple * power for multiple in (1, 2, 2.5, 5, 10) if multiple * power >= raw_step)
    first = math.ceil(low / step) * step
    return [first + index * step for index in range(int((high - first) / step + 1e-9) + 1)]


def _log_ticks(low: float, high: float) -> list:
    """log10 of the values 1, 2, 5 times a power of ten inside [10**low, 10**high] (only the powers
    of ten when the range spans many decades)."""
    decades = range(math.floor(low), math.ceil(high) + 1)
    multiples = (1, 2, 5) if high - low < 3 else (1,)
    values = [math.log10(m) + decade for decade in decades for m in multiples]
    return [value for value in values if low <= value <= high] or [low, high]


def _tick_label(value: float, log_scale: bool) -> str:
    value = 10 ** value if log_scale else value
    return f"{value:.4g}"


def draw_panel(canvas: np.ndarray, box, title: str, series: list, log_scale: bool = False) -> None:
    """A line chart in ``box`` (left, top, right, bottom) of ``canvas``: ``series`` is a list of
    (steps, values, bgr colour); drawn by hand with OpenCV (see the module docstring)."""
    left, top, right, bottom = box
    plot_left, plot_top, plot_right, plot_bottom = left + 70, top + 34, right - 14, bottom - 40
    cv2.putText(canvas, title, (left + 70, top + 22), FONT, 0.6, (0, 0, 0), 1, cv2.LINE_AA)
    points = [(np.asarray(s, float), np.log10(np.asarray(v, float)) if log_scale else np.asarray(v, float), c)
              for s, v, c in series if len(s)]
    finite = [(s[np.isfinite(v)], v[np.isfinite(v)], c) for s, v, c in points]
    finite = [(s, v, c) for s, v, c in finite if len(s)]
    cv2.rectangle(canvas, (plot_left, plot_top), (plot_right, plot_bottom), (0, 0, 0), 1)
    if not finite:
        cv2.putText(canvas, "no data", (plot_left + 10, plot_top + 30), FONT, 0.5, (90, 90, 90), 1, cv2.LINE_AA)
        return
    x_low = min(s.min() for s, _, _ in finite)
    x_high = max(s.max() for s, _, _ in finite)
    y_low = min(v.min() for _, v, _ in finite)
    y_high = max(v.max() for _, v, _ in finite)
    if x_high == x_low:
        x_low, x_high = x_low - 1, x_high + 1
    margin = (y_high - y_low) * 0.05 or max(abs(y_high) * 0.05, 1e-3)
    y_low, y_high = y_low - margin, y_high + margin

    def to_pixels(steps, values):
        x = plot_left + (steps - x_low) / (x_high - x_low) * (plot_right - plot_left)
        y = plot_bottom - (values - y_low) / (y_high - y_low) * (plot_bottom - plot_top)
        return np.stack([x, y], axis=1).round().astype(np.int32)

    y_ticks = _log_ticks(y_low, y_high) if log_scale else _ticks(y_low, y_high)
    for value in y_ticks:
        y = int(round(plot_bottom - (value - y_low) / (y_high - y_low) * (plot_bottom - plot_top)))
        cv2.line(canvas, (plot_left, y), (plot_right, y), (225, 225, 225), 1)
        cv2.putText(canvas, _tick_label(value, log_scale), (left + 4, y + 5), FONT, 0.42, (0, 0, 0), 1, cv2.LINE_AA)
    for value in _ticks(x_low, x_high):
        x = int(round(plot_left + (value - x_low) / (x_high - x_low) * (plot_right - plot_left)))
        cv2.line(canvas, (x, plot_bottom), (x, plot_bottom + 5), (0, 0, 0), 1)
        label = f"{value:.4g}"
        cv2.putText(canvas, label, (x - 4 * len(label), plot_bottom + 20), FONT, 0.42, (0, 0, 0), 1, cv2.LINE_AA)
    cv2.putText(canvas, "step", (plot_right - 36, bottom - 4), FONT, 0.45, (0, 0, 0), 1, cv2.LINE_AA)
    for steps, values, colour in finite:
        pixels = to_pixels(steps, values)
        if len(pixels) == 1:
            cv2.circle(canvas, tuple(int(c) for c in pixels[0]), 3, colour, -1, cv2.LINE_AA)
        else:
            cv2.polylines(canvas, [pixels], False, colour, 2, cv2.LINE_AA)


def plot_curves(runs: list, path: Path, panel_size=(560, 320)) -> None:
    """``curves.png``: train loss, val PSNR, val SSIM, val L1 against the step; a legend of run colours."""
    width, height = panel_size
    legend_height = 24 * len(runs) + 16
    canvas = np.full((2 * height + legend_height, 2 * width, 3), 255, np.uint8)
    colours = {run.name: RUN_COLORS[i % len(RUN_COLORS)] for i, run in enumerate(runs)}
    panels = [("training loss (log scale)", lambda run: [(r["step"], r[run.loss_key()]) for r in run.train
                                                         if run.loss_key() in r], True)]
    for key, title in (("psnr", "validation PSNR (dB)"), ("ssim", "validation SSIM"), ("l1", "validation L1")):
        panels.append((title, lambda run, key=key: [(r["step"], r[key]) for r in run.val if key in r], False))
    for index, (title, points_of, log_scale) in enumerate(panels):
        series = []
        for run in runs:
            points = [(s, v) for s, v in points_of(run) if not (log_scale and v <= 0)]
            series.append(([s for s, _ in points], [v for _, v in points], colours[run.name]))
        row, column = divmod(index, 2)
        draw_panel(canvas, (column * width, row * height, (column + 1) * width, (row + 1) * height), title, series,
                   log_scale)
    for index, run in enumerate(runs):
        y = 2 * height + 20 + 24 * index
        cv2.line(canvas, (80, y - 5), (120, y - 5), colours[run.name], 3, cv2.LINE_AA)
        cv2.putText(canvas, run.name, (130, y), FONT, 0.5, (0, 0, 0), 1, cv2.LINE_AA)
    cv2.imwrite(str(path), canvas)


def _to_bgr_uint8(rgb: np.ndarray) -> np.ndarray:
    return cv2.cvtColor((np.clip(rgb, 0, 1) * 255 + 0.5).astype(np.uint8), cv2.COLOR_RGB2BGR)


def _cell(image_bgr: np.ndarray, height: int) -> np.ndarray:
    scale = height / image_bgr.shape[0]
    size = (max(1, round(image_bgr.shape[1] * scale)), height)
    return cv2.resize(image_bgr, size, interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR)


def error_heat_map(pred: np.ndarray, target: np.ndarray) -> np.ndarray:
    """|pred - target| averaged over channels, as a BGR inferno heat map (0 black, ERROR_SCALE and up yellow)."""
    error = np.abs(pred - target).mean(axis=2) / ERROR_SCALE
    return cv2.applyColorMap((np.clip(error, 0, 1) * 255 + 0.5).astype(np.uint8), cv2.COLORMAP_INFERNO)


def _psnr(pred: np.ndarray, target: np.ndarray) -> float:
    mse = float(np.mean((pred.astype(np.float64) - target) ** 2))
    return 10 * math.log10(1 / max(mse, 1e-10))


def _labelled(cell: np.ndarray, label: str, caption: str = "") -> np.ndarray:
    """A cell with a white strip above it holding ``label`` and one below holding ``caption``."""
    strip = np.full((26, cell.shape[1], 3), 255, np.uint8)
    above, below = strip.copy(), strip.copy()
    cv2.putText(above, label[: max(4, cell.shape[1] // 9)], (4, 18), FONT, 0.5, (0, 0, 0), 1, cv2.LINE_AA)
    if caption:
        cv2.putText(below, caption, (4, 18), FONT, 0.5, (0, 0, 0), 1, cv2.LINE_AA)
    return np.concatenate([above, cell, below], axis=0)


def comparison_grid(inp: np.ndarray, outputs: list, target: np.ndarray, cell_height: int) -> np.ndarray:
    """Top row input | each (run name, output) | target; bottom row their error heat maps against the target."""
    columns = [("input", inp)] + outputs + [("target", target)]
    top, bottom = [], []
    for label, image in columns:
        cell = _cell(_to_bgr_uint8(image), cell_height)
        top.append(_labelled(cell, label))
        if image is target:
            bottom.append(_labelled(np.full_like(cell, 255), ""))
        else:
            heat = _cell(error_heat_map(image, target), cell_height)
            bottom.append(_labelled(heat, "error vs target", f"{_psnr(image, target):.2f} dB"))
    gap = np.full((top[0].shape[0], 6, 3), 255, np.uint8)

    def join(cells):
        return np.concatenate([part for cell in cells for part in (cell, gap)][:-1], axis=1)

    return np.concatenate([join(top), join(bottom)], axis=0)


def validation_pairs(runs: list, data, count: int) -> list:
    """The first ``count`` validation pairs by name: of --data (its val split, else all its pairs), or
    the split the first run with a data folder trained with; [] with a note when there is none."""
    if data is not None:
        found = discover_pairs(data)
        return sorted(found["val"] or found["train"], key=lambda p: p.name)[:count]
    for run in runs:
        config = run.config
        if config.get("data") and Path(config["data"]).is_dir():
            _, val = resolve_datasets_pairs(config["data"], val_data=config.get("val_data"),
                                            val_fraction=config.get("val_fraction", 0.1), seed=config.get("seed", 0))
            return sorted(val, key=lambda p: p.name)[:count]
    print("no validation images: the runs' data folders are not on this machine (pass --data); grids skipped")
    return []


def write_grids(runs: list, pairs: list, out: Path, args) -> list:
    """One grid PNG per pair; each run's model is loaded once and freed before the next."""
    photos = [(pair, read_image(pair.input), read_image(pair.target)) for pair in pairs]
    outputs = [[] for _ in pairs]
    for run in runs:
        try:
            enhancer = enhancer_from_args(args, checkpoints=resolve_checkpoints(run.dir))
        except CheckpointError as error:
            print(f"grids: {run.name} left out ({error})")
            continue
        for index, (_, inp, _) in enumerate(photos):
            outputs[index].append((run.name, enhancer.enhance(inp)))
        del enhancer
    paths = []
    for index, (pair, inp, target) in enumerate(photos):
        safe_name = "".join(c if c.isalnum() or c in "-_" else "_" for c in pair.name)
        path = out / f"grid_{index + 1}_{safe_name}.png"
        cv2.imwrite(str(path), comparison_grid(inp, outputs[index], target, args.cell_height))
        paths.append((pair.name, path))
    return paths


def write_report(runs: list, out: Path, grids: list, command: str) -> Path:
    lines = ["# Results report", "",
             f"`{command}` on {datetime.now():%Y-%m-%d %H:%M}, {len(runs)} run(s), best validation PSNR first.", "",
             results_table(runs), "",
             "L1 / PSNR / SSIM: the run's best validation (highest PSNR; the weights in its best.pt). "
             "Wall time: training time logged in metrics.jsonl, summed over resumed segments. "
             "Train img/s: median training throughput."]
    baselines = {}
    for run in runs:
        if run.identity is not None:
            baselines.setdefault(str(run.config.get("data", "?")), (run.name, run.identity))
    for data, (name, identity) in baselines.items():
        lines.append(f"\nAs-shot input vs target (the baseline to beat, data `{data}`, logged by {name}): "
                     f"L1 {identity['l1']:.4f}, PSNR {identity['psnr']:.2f} dB, SSIM {identity['ssim']:.4f}.")
    lines += ["", "## Training curves", "", "![training curves](curves.png)"]
    if grids:
        lines += ["", "## Validation images", "",
                  "Top: input | each run's output | target. Bottom: absolute error against the target "
                  f"(mean over channels; black 0, yellow {ERROR_SCALE} or more) and the image's PSNR."]
        for name, path in grids:
            lines += ["", f"### {name}", "", f"![{name}]({path.name})"]
    path = out / "report.md"
    path.write_text("\n".join(lines) + "\n")
    return path


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", help="run folders (e.g. runs/*)")
    parser.add_argument("--out", type=Path, default=Path("report"), help="output folder (default report/)")
    parser.add_argument("--images", type=int, default=3, help="validation images in the comparison grids (0: none)")
    parser.add_argument("--data", type=Path,
                        help="take the grid images from this data folder instead of the runs' own")
    parser.add_argument("--cell-height", type=int, default=256, help="height in pixels of each image in the grids")
    add_inference_args(parser, checkpoint="none")
    args = parser.parse_args(argv)

    runs = sort_best_first(find_runs(args.runs))
    args.out.mkdir(parents=True, exist_ok=True)
    plot_curves(runs, args.out / "curves.png")
    pairs = validation_pairs(runs, args.data, args.images) if args.images > 0 else []
    grids = write_grids(runs, pairs, args.out, args) if pairs else []
    command = "python report.py " + " ".join(sys.argv[1:] if argv is None else argv)
    path = write_report(runs, args.out, grids, command)
    print(results_table(runs))
    print(f"report: {path}")
    return path


if __name__ == "__main__":
    run_cli(main)
