"""Equal-budget comparison of architectures: each recipe trained with one budget and a small config of
about the same parameter count, scored by evaluate.py, one markdown table.

    OMP_NUM_THREADS=1 nice -n 10 python tools/compare_models.py --out runs/compare --seeds 0 1 \
        --markdown runs/compare/table.md

Budget (the issue-4 budget of README "The saturation term"): 150 steps, 4 x 64^2 crops, lr 1e-3,
warm-up 20, EMA 0.99, one validation at the end, no loader workers; every recipe keeps its own loss,
optimizer and schedule. Each run is a child process: its peak resident memory is the kernel's
``ru_maxrss`` from ``os.wait4`` (training and the final validation, torch included); the train step
time is the batch size over the median of the logged ``images_per_s`` intervals after the first (which
holds start-up); the parameter count is the one the recipe logs. Then ``evaluate.py --checkpoint
RUN/last.pt --data DATA`` (the EMA weights) gives PSNR, SSIM and the window/shadow PSNR on the data's
validation photos. A finished run keeps its figures in ``RUN/compare.json`` and is not trained again
(delete the folder to redo it), so an interrupted comparison continues and a seed can be added later.

Without --data: the demo data (``$REHDR_CACHE``), which it generates first if needed. ``--quick``
trains the smoke-test widths for 4 steps on 32 px crops (a code check, not a comparison).
``--timing-steps N`` trains only N steps of the budget (validation centre-cropped to 64 px, no
evaluate.py): the step time and peak memory of a model too slow for the full budget on this machine,
with '-' for the quality columns (runs in ``<model>_s<seed>_t<N>``).
"""
import argparse
import json
import math
import os
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

BUDGET = ("--steps 150 --crop 64 --batch-size 4 --lr 1e-3 --warmup 20 --ema 0.99 --val-every 150 "
          "--save-every 150 --log-every 25 --workers 0")
QUICK_BUDGET = ("--steps 4 --crop 32 --batch-size 2 --lr 1e-3 --warmup 1 --ema 0.9 --val-every 4 "
                "--save-every 4 --log-every 1 --workers 0")
# name: (recipe, small config at ~0.8M parameters like the Restormer dim-16 baseline, smoke-test config).
# MambaIR-UNet cannot go below dim 30 (its channel attention divides the channels by 30): 2.6M.
# HAT and DAT keep the official head width (180 channels / 6 heads = 30; DAT's two spatial branches take
# half the channels and half the heads each): 6 heads of 10 channels cost HAT twice the step time here,
# in many tiny attention matmuls, for the same parameters.
# The loss networks of RetinexMamba, MambaIR-UNet and DAT (VGG19 / LPIPS AlexNet) run with random weights:
# same cost, no downloads, and the other loss terms still steer.
MODELS = {
    "restormer": ("train_restormer_512_combined_loss.py",
                  "--dim 16 --num-blocks 1 1 1 1 --num-refinement-blocks 1 --heads 1 1 1 1",
                  "--dim 8 --num-blocks 1 1 1 1 --num-refinement-blocks 1 --heads 1 1 1 1"),
    "retinexformer": ("train_retinexformer_hdr.py", "--n-feat 28 --num-blocks 1 2 2",
                      "--n-feat 8 --num-blocks 1 1 1"),
    "retinexmamba": ("train_retinexmamba.py",
                     "--n-feat 16 --num-blocks 1 2 2 --d-state 16 --vgg-weights random --lpips-weights random",
                     "--n-feat 4 --num-blocks 1 1 1 --d-state 2 --vgg-weights random --lpips-weights random"),
    "mambair_unet": ("train_mamba.py",
                     "--arch mambair_unet --dim 30 --num-blocks 1 1 1 1 --num-refinement-blocks 1 --mlp-ratio 1 "
                     "--lpips-weights random",
                     "--arch mambair_unet --dim 30 --num-blocks 1 1 1 1 --num-refinement-blocks 1 --mlp-ratio 1 "
                     "--lpips-weights random"),
    "hat": ("train_hat.py", "--embed-dim 60 --depths 2 2 2 2 --num-heads 2 2 2 2",
            "--embed-dim 12 --depths 1 --num-heads 2 --window-size 8 --squeeze-factor 4"),
    "dat": ("train_dat.py", "--embed-dim 84 --depth 2 2 2 --num-heads 2 2 2 --lpips-weights random",
            "--embed-dim 64 --depth 2 --num-heads 2 --split-size 4 8 --lpips-weights random"),
    "nafnet": ("train_nafnet_stable.py",
               "--width 14 --middle-blk-num 1 --enc-blk-nums 1 1 1 1 --dec-blk-nums 1 1 1 1",
               "--width 8 --middle-blk-num 1 --enc-blk-nums 1 1 1 1 --dec-blk-nums 1 1 1 1"),
}
METRICS = ("psnr", "ssim", "window_psnr", "shadow_psnr")


def run_and_measure(command: list, log: Path) -> dict:
    """Run a child with stdout+stderr to ``log``; its wall seconds and peak RSS (MiB)."""
    start = time.perf_counter()
    with log.open("w") as handle:
        process = subprocess.Popen(command, cwd=ROOT, stdout=handle, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(process.pid, 0)
    if status != 0:
        tail = log.read_text().strip().splitlines()[-1:] or ["(no output)"]
        raise SystemExit(f"error: {' '.join(command[1:3])} failed (see {log}): {tail[0]}")
    return {"wall_s": time.perf_counter() - start, "peak_rss_mb": usage.ru_maxrss / 1024}  # KiB on Linux


def train_step_seconds(run_dir: Path, batch_size: int) -> float:
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    rates = [r["images_per_s"] for r in records if r.get("split") == "train" and "images_per_s" in r]
    return batch_size / statistics.median(rates[1:] or rates)


def mean_metrics(csv_path: Path) -> dict:
    lines = csv_path.read_text().splitlines()
    header, mean = lines[0].split(","), lines[-1].split(",")
    return {name: float(value) if value else float("nan") for name, value in zip(header, mean) if name != "name"}


def run_one(name: str, seed: int, args) -> dict:
    script, small, smoke = MODELS[name]
    run_dir = args.out / (f"{name}_s{seed}" + (f"_t{args.timing_steps}" if args.timing_steps else ""))
    result_path = run_dir / "compare.json"
    if result_path.exists():
        return json.loads(result_path.read_text())
    budget = (QUICK_BUDGET if args.quick else BUDGET).split()
    config = (smoke if args.quick else small).split()
    if args.timing_steps:
        steps = str(args.timing_steps)
        budget += ["--steps", steps, "--val-every", steps, "--save-every", steps,
                   "--log-every", str(max(1, args.timing_steps // 3)), "--val-crop", "64"]
    run_dir.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, script, "--data", str(args.data), "--seed", str(seed), "--out", str(run_dir),
               *budget, *config, *args.recipe_args]
    print("+", " ".join(command[1:]), flush=True)
    result = {"model": name, "seed": seed, "config": " ".join(config), "timing_steps": args.timing_steps,
              **run_and_measure(command, run_dir / "train.log")}
    logged = re.search(r"model: .*?, ([\d,]+) parameters", (run_dir / "train.log").read_text())
    result["params"] = int(logged.group(1).replace(",", ""))
    result["train_step_s"] = train_step_seconds(run_dir, int(budget[budget.index("--batch-size") + 1]))
    if args.timing_steps:
        result.update({metric: float("nan") for metric in METRICS})
        result_path.write_text(json.dumps(result, indent=1))
        return result
    evaluate = [sys.executable, "evaluate.py", "--checkpoint", str(run_dir / "last.pt"), "--data", str(args.data),
                "--pred", str(run_dir / "eval"), "--device", "cpu"]
    run_and_measure(evaluate, run_dir / "evaluate.log")
    result.update(mean_metrics(run_dir / "eval" / "metrics.csv"))
    result_path.write_text(json.dumps(result, indent=1))
    return result


def cell(values: list, fmt: str) -> str:
    """The mean over seeds, each seed in brackets when there are several."""
    if any(math.isnan(v) for v in values):
        return "-"
    text = fmt.format(statistics.mean(values))
    return text + (" (" + " / ".join(fmt.format(v) for v in values) + ")" if len(values) > 1 else "")


def markdown(results: list, seeds: list) -> str:
    lines = [f"| model (config) [seeds {', '.join(map(str, seeds))}] | params (M) | PSNR (dB) | SSIM | window PSNR "
             "| shadow PSNR | train step (s) | peak RSS (MB) |", "|---|---|---|---|---|---|---|---|"]
    for name in dict.fromkeys(r["model"] for r in results):
        runs = [r for r in results if r["model"] == name]
        quality = [cell([r[m] for r in runs], "{:.4f}" if m == "ssim" else "{:.2f}") for m in METRICS]
        timing = f", {runs[0]['timing_steps']} steps: timing only" if runs[0].get("timing_steps") else ""
        lines.append(f"| {name} (`{runs[0]['config']}`{timing}) | {runs[0]['params'] / 1e6:.2f} | " + " | ".join(quality)
                     + f" | {statistics.mean(r['train_step_s'] for r in runs):.2f} "
                     f"| {statistics.mean(r['peak_rss_mb'] for r in runs):.0f} |")
    return "\n".join(lines)


def main(argv=None) -> str:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True, help="folder of the runs (one <model>_s<seed> each)")
    parser.add_argument("--data", type=Path, default=None, help="paired data folder (default: the demo data)")
    parser.add_argument("--models", nargs="+", choices=tuple(MODELS), default=list(MODELS))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--quick", action="store_true", help="smoke-test widths, 4 steps: a code check")
    parser.add_argument("--timing-steps", type=int, default=None, metavar="N",
                        help="train only N steps: step time and peak memory, no quality figures")
    parser.add_argument("--markdown", type=Path, default=None, help="also write the table here")
    parser.add_argument("recipe_args", nargs=argparse.REMAINDER, help="after --: extra flags for every recipe")
    args = parser.parse_args(argv)
    args.recipe_args = [a for a in args.recipe_args if a != "--"]
    if args.data is None:
        from data.demo import ensure_demo_data
        args.data = Path(ensure_demo_data())
    results = [run_one(name, seed, args) for seed in args.seeds for name in args.models]
    table = markdown(results, args.seeds)
    print(table)
    if args.markdown:
        args.markdown.parent.mkdir(parents=True, exist_ok=True)
        args.markdown.write_text(table + "\n")
    return table


if __name__ == "__main__":
    main()
