"""Score enhanced photos against their targets: L1, PSNR, SSIM, and PSNR in the window and shadow regions.

    python evaluate.py --pred PRED --target TARGETS [--input INPUTS]   # score existing predictions
    python evaluate.py --pred PRED --data DATA                         # inputs and targets from a data folder
    python evaluate.py --checkpoint RUN/best.pt --data DATA            # enhance DATA's inputs, then score them
    python evaluate.py --pred DATA/input --data DATA                   # the as-shot baseline a model must beat

Metrics per image (utils.metrics, data range [0, 1], scikit-image's conventions), then their mean:

- ``l1``, ``psnr`` (dB), ``ssim`` over the whole image;
- ``window_psnr``: PSNR over the pixels whose *input* luma (Rec. 709) is at least 0.85, i.e. where
  ``losses.window.overexposure_mask`` (the window loss's soft mask) is >= 0.5: the blown-out windows
  and sky, this domain's hard part;
- ``shadow_psnr``: PSNR over the pixels whose input luma is below 0.15 (about 38/255): the crushed
  interior shadows the edit must lift;
- ``window_fraction`` / ``shadow_fraction``: the share of the image in each region.

A region covering less than 0.1% of an image has no PSNR for it (an empty CSV cell); a region's mean
is over the images that have it. Region PSNRs need the inputs: --data, or --input with --target.

Pairs are matched like the training data (data.pairs): by relative path and file stem, so
extensions may differ; with --data any training layout works and --split picks the pairs.
Writes a CSV (one row per image, then the means; default PRED/metrics.csv) and prints the means.
With --checkpoint the predictions are written to --pred (default RUN/eval_<data folder name>), as
enhance.py would write them, and the CSV gains the seconds each photo took to enhance.
"""
import argparse
import csv
import math
import time
from pathlib import Path

import torch

from data.io import read_image
from data.pairs import _images_by_key, _match, discover_pairs, resolve_datasets_pairs
from losses.colorspace import luminance
from losses.window import overexposure_mask
from utils.cli import run_cli
from utils.inference import add_inference_args, enhancer_from_args, write_like
from utils.metrics import l1, masked_psnr, psnr, ssim
from utils.training import select_device

SHADOW_THRESHOLD = 0.15
MIN_REGION_FRACTION = 0.001
METRICS = ("l1", "psnr", "ssim", "window_psnr", "shadow_psnr", "window_fraction", "shadow_fraction")
# How the printed table formats each mean: dB to two decimals, the [0, 1] scores to four.
TABLE = (("l1", "L1", "{:.4f}"), ("psnr", "PSNR (dB)", "{:.2f}"), ("ssim", "SSIM", "{:.4f}"),
         ("window_psnr", "window PSNR (dB)", "{:.2f}"), ("shadow_psnr", "shadow PSNR (dB)", "{:.2f}"),
         ("seconds", "s/photo", "{:.2f}"))


def region_masks(inp: torch.Tensor) -> dict:
    """Boolean (N, 1, H, W) masks of the window and shadow regions of input photos (N, 3, H, W):
    window = overexposure_mask(inp) >= 0.5 (input luma >= 0.85), shadow = input luma < 0.15."""
    return {"window": overexposure_mask(inp) >= 0.5, "shadow": luminance(inp) < SHADOW_THRESHOLD}


@torch.no_grad()
def score(pred: torch.Tensor, target: torch.Tensor, inp: torch.Tensor = None) -> dict:
    """The metrics of one image (tensors (1, 3, H, W) in [0, 1]); region entries only with ``inp``."""
    values = {name: metric(pred, target, reduction="none")[0].item()
              for name, metric in (("l1", l1), ("psnr", psnr), ("ssim", ssim))}
    if inp is not None:
        for region, mask in region_masks(inp).items():
            fraction = mask.float().mean().item()
            present = fraction >= MIN_REGION_FRACTION
            region_psnr = masked_psnr(pred, target, mask, reduction="none")[0].item() if present else math.nan
            values[f"{region}_psnr"] = region_psnr
            values[f"{region}_fraction"] = fraction
    return values


def _select_split(data: Path, split: str, val_fraction: float, seed: int) -> list:
    found = discover_pairs(data)
    if split == "all":
        return found["train"] + (found["val"] or [])
    if split == "auto":
        return found["val"] or found["train"]
    train, val = resolve_datasets_pairs(data, val_fraction=val_fraction, seed=seed)
    return val if split == "val" else train


def _prediction_keys(pred_dir: Path, suffix: str) -> dict:
    """{relative stem without ``suffix``: path} of the images under ``pred_dir``."""
    keys = {}
    for key, path in _images_by_key(pred_dir).items():
        if suffix and key.endswith(suffix):
            key = key[: -len(suffix)]
        keys[key] = path
    return keys


def build_items(args) -> list:
    """[(name, pred path or None, target path, input path or None)] for the chosen mode, sorted by name."""
    if args.data is not None:
        pairs = _select_split(args.data, args.split, args.val_fraction, args.seed)
        if args.checkpoint:
            return [(pair.name, None, pair.target, pair.input) for pair in pairs]
        predictions = _prediction_keys(args.pred, args.suffix)
        items, missing = [], []
        for pair in pairs:
            # layout 3 names a pair 'ID' while its input (and so enhance.py's output) is 'ID_src'
            candidates = (pair.name, (Path(pair.name).parent / pair.input.stem).as_posix())
            found = next((predictions[key] for key in candidates if key in predictions), None)
            if found is None:
                missing.append(pair.name)
            else:
                items.append((pair.name, found, pair.target, pair.input))
        if missing:
            raise ValueError(f"--pred {args.pred} has no prediction for {len(missing)} of {len(pairs)} pair(s) "
                             f"of --data {args.data}: {', '.join(missing[:3])} (matched by relative path and stem)")
        return items
    pairs = _match(_prediction_keys(args.pred, args.suffix), _images_by_key(args.target),
                   f"--pred '{args.pred}'", f"--target '{args.target}'")
    inputs = {}
    if args.input is not None:
        matched = _match(_images_by_key(args.target), _images_by_key(args.input),
                         f"--target '{args.target}'", f"--input '{args.input}'")
        inputs = {pair.name: pair.target for pair in matched}
    return [(pair.name, pair.input, pair.target, inputs.get(pair.name)) for pair in pairs]


def mean_row(rows: list) -> dict:
    """The mean of every metric over the rows that have it (NaN when none has)."""
    means = {"name": "mean"}
    for name in (*METRICS, "seconds"):
        values = [row[name] for row in rows if name in row and not math.isnan(row[name])]
        if any(name in row for row in rows):
            means[name] = sum(values) / len(values) if values else math.nan
    return means


def write_csv(path: Path, rows: list) -> None:
    columns = ["name"] + [name for name in (*METRICS, "seconds") if any(name in row for row in rows)]
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns)
        writer.writeheader()
        for row in rows:
            writer.writerow({key: "" if isinstance(value, float) and math.isnan(value) else
                             (f"{value:.6g}" if isinstance(value, float) else value) for key, value in row.items()})


def format_table(means: dict, rows: list) -> str:
    """The means as a two-line text table; region columns say on how many images they are."""
    header, cells = ["images"], [str(len(rows))]
    for name, title, fmt in TABLE:
        if name not in means:
            continue
        value = means[name]
        text = "-" if math.isnan(value) else fmt.format(value)
        if name.endswith("_psnr") and name != "psnr":
            text += f" ({sum(not math.isnan(row[name]) for row in rows)} img)"
        header.append(title)
        cells.append(text)
    widths = [max(len(a), len(b)) for a, b in zip(header, cells)]
    lines = ("  ".join(text.ljust(width) for text, width in zip(line, widths)) for line in (header, cells))
    return "\n".join(line.rstrip() for line in lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pred", type=Path, help="predictions to score (with --checkpoint: where they are written)")
    parser.add_argument("--target", type=Path, help="target photos, matched to --pred by relative path and stem")
    parser.add_argument("--input", type=Path, help="the as-shot inputs (for the window/shadow regions) with --target")
    parser.add_argument("--data", type=Path, help="a paired data folder (any training layout): inputs and targets")
    parser.add_argument("--split", choices=("auto", "val", "train", "all"), default="auto",
                        help="pairs of --data to score (auto: its val split when it has one, else all; val/train: "
                             "the split training draws with --val-fraction and --seed)")
    parser.add_argument("--val-fraction", type=float, default=0.1, help="as in training, for --split val/train")
    parser.add_argument("--seed", type=int, default=0, help="as in training, for --split val/train")
    parser.add_argument("--suffix", default="", help="the --suffix the predictions were written with by enhance.py")
    parser.add_argument("--csv", type=Path, help="where to write per-image metrics (default PRED/metrics.csv)")
    add_inference_args(parser)
    args = parser.parse_args(argv)
    if (args.target is None) == (args.data is None):
        parser.error("give the targets with exactly one of --target DIR or --data DATA")
    if args.checkpoint and args.data is None:
        parser.error("--checkpoint needs --data (the inputs to enhance and their targets)")
    if not args.checkpoint and args.pred is None:
        parser.error("give --pred DIR (predictions to score) or --checkpoint with --data")
    if args.checkpoint and args.pred is None:
        run = Path(args.checkpoint[0])
        args.pred = (run if run.is_dir() else run.parent) / f"eval_{args.data.resolve().name}"
    folders = (("--pred", args.pred), ("--target", args.target), ("--input", args.input), ("--data", args.data))
    for flag, folder in folders:
        if folder is not None and not folder.is_dir() and not (flag == "--pred" and args.checkpoint):
            raise FileNotFoundError(f"{flag} {folder} is not a folder")

    items = build_items(args)
    enhancer = enhancer_from_args(args) if args.checkpoint else None
    device = enhancer.device if enhancer is not None else select_device(args.device)
    rows, failures = [], []
    for name, pred_path, target_path, input_path in items:
        try:
            target = read_image(target_path)
            inp = read_image(input_path) if input_path is not None else None
            timing = {}
            if enhancer is not None:
                start = time.perf_counter()
                prediction = enhancer.predict(inp)
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
                timing["seconds"] = time.perf_counter() - start
                write_like(input_path, args.pred / Path(name).parent / f"{Path(name).name}{input_path.suffix}",
                           prediction[0].permute(1, 2, 0).cpu().numpy())
            else:
                prediction = _as_batch(read_image(pred_path), device)
            if prediction.shape[-2:] != target.shape[:2]:
                raise ValueError(f"{name}: prediction is {tuple(prediction.shape[-2:])} but target {target_path} is "
                                 f"{target.shape[:2]} (height, width)")
            values = score(prediction, _as_batch(target, device), _as_batch(inp, device) if inp is not None else None)
            rows.append({"name": name, **values, **timing})
        except (ValueError, OSError) as error:  # ImageReadError is a ValueError
            failures.append(str(error))
            print(f"skipped: {error}")
    if not rows:
        raise SystemExit("error: no image could be scored: " + "; ".join(failures))
    means = mean_row(rows)
    csv_path = args.csv or args.pred / "metrics.csv"
    write_csv(csv_path, rows + [means])
    print(format_table(means, rows))
    print(f"per-image metrics: {csv_path}")
    if failures:
        raise SystemExit(f"error: {len(failures)} of {len(items)} image(s) failed: " + "; ".join(failures))
    return means


def _as_batch(rgb, device) -> torch.Tensor:
    return torch.from_numpy(rgb).permute(2, 0, 1)[None].to(device)


if __name__ == "__main__":
    run_cli(main)
