"""The elite refiner family on one machine, one after another with the same flags: training
throughput, the cache's speed-up against running the backbone in the loop, the fast refiner's speed
against the full one, and each run's validation next to the backbone alone.

    OMP_NUM_THREADS=2 python tools/bench_refiner.py --backbone runs/backbone --data DATA --out runs/bench \
        -- --steps 200 --crop 96 --batch-size 4 --lr 1e-3 --warmup 20 --val-every 200 --workers 0

Everything after ``--`` goes to every recipe. Runs, in order: train_elite_refiner_combined.py with the
cached backbone outputs (which also fills the cache), the same with --backbone-in-loop (the backbone
on every training crop), then train_elite_refiner_fast.py, train_elite_refiner_normalized.py and
train_elite_color_refiner.py (--vgg-weights passes through; ``random`` times the VGG term without
the 548 MB file). Throughput is the median of the logged ``images_per_s`` intervals after the first
(which holds start-up). Validation: the run's last 'val' record and the 'backbone' record (the
backbone alone on the same photos, same metrics).
"""
import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RUNS = (
    ("combined", "train_elite_refiner_combined.py", []),
    ("combined, backbone in loop", "train_elite_refiner_combined.py", ["--backbone-in-loop"]),
    ("fast", "train_elite_refiner_fast.py", []),
    ("normalized", "train_elite_refiner_normalized.py", []),
    ("full", "train_elite_color_refiner.py", []),
)


def records(run_dir: Path) -> list:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def throughput(entries: list) -> float:
    rates = [r["images_per_s"] for r in entries if r["split"] == "train"]
    return statistics.median(rates[1:] or rates)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backbone", required=True)
    parser.add_argument("--data", required=True)
    parser.add_argument("--out", type=Path, required=True, help="folder of the runs (one sub-folder each)")
    parser.add_argument("--vgg-weights", default=None, help="for the full refiner's VGG term")
    parser.add_argument("recipe_args", nargs=argparse.REMAINDER, help="after --: flags for every recipe")
    args = parser.parse_args(argv)
    shared = [a for a in args.recipe_args if a != "--"]
    results = {}
    for label, script, flags in RUNS:
        run_dir = args.out / label.replace(", ", "_").replace(" ", "_")
        extra = ["--vgg-weights", args.vgg_weights] if script == "train_elite_color_refiner.py" and args.vgg_weights else []
        command = [sys.executable, str(ROOT / script), "--backbone", args.backbone, "--data", args.data,
                   "--out", str(run_dir)] + shared + flags + extra
        print("+", " ".join(command), flush=True)
        subprocess.run(command, check=True, cwd=ROOT)
        results[label] = records(run_dir)

    backbone = next(r for r in results["combined"] if r["split"] == "backbone")
    print(f"\n| run | train img/s | val PSNR | val SSIM | val L1 |\n|---|---|---|---|---|\n"
          f"| backbone alone | - | {backbone['psnr']:.2f} | {backbone['ssim']:.4f} | {backbone['l1']:.4f} |")
    for label, entries in results.items():
        val = [r for r in entries if r["split"] == "val"][-1]
        print(f"| {label} | {throughput(entries):.1f} | {val['psnr']:.2f} | {val['ssim']:.4f} | {val['l1']:.4f} |")
    speeds = {label: throughput(entries) for label, entries in results.items()}
    print(f"\ncached backbone outputs vs backbone in the loop: {speeds['combined'] / speeds['combined, backbone in loop']:.2f}x"
          f" training throughput\nfast vs full refiner: {speeds['fast'] / speeds['full']:.2f}x training throughput")


if __name__ == "__main__":
    main()
