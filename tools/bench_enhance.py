"""Seconds and peak memory to enhance one photo with any architecture of the library (Restormer Base
by default), per tile size; and how far tiled output is from whole-image output, per tile size and overlap.

Timing and memory (README "Enhance and evaluate"; random weights, one 3296x2192 photo per setting):

    OMP_NUM_THREADS=2 nice -n 19 /work/venv/bin/python tools/bench_enhance.py --size 3296x2192 \
        --tiles 256 512 --device cpu --threads 2

``--arch`` picks the network (restormer, retinexformer, retinexmamba, mambair_unet, hat, dat, nafnet),
``--model base`` its official configuration (as the recipe builds it: HAT and DAT at ``upscale=1``),
``tiny`` a test size. A photo too slow to enhance whole on this machine can be timed on part of it:
``--region 992x512`` enhances only that top-left region of the same photo, through the same tiled code
path, and the table adds the wall and CPU seconds extrapolated to the full photo by tile count (seconds
per tile of the region x the full photo's tiles; a region that is a whole number of strides plus the
overlap has only full tiles). Extrapolated figures are labelled so. With one thread the CPU seconds of
the enhance call are what an idle core would take; wall seconds also count other jobs on the machine.

Each setting runs in a fresh child process that loads the checkpoint through ``load_enhancer`` and
enhances the photo once (``enhance.py``'s path, without file I/O). Its peak resident memory is the
kernel's ``ru_maxrss`` for that child from ``os.wait4`` (what ``/usr/bin/time -v`` reports), which
counts torch's native allocations that tracemalloc misses; on CUDA the child also reports
``torch.cuda.max_memory_allocated``. ``--whole`` adds a whole-image run, which is only started when
the memory extrapolated from the tile runs fits in half of the machine's available memory.

Pipeline overhead: ``enhance`` vs the network's time inside it (hooks, same call) and vs bare forwards
of exactly the tiles it ran, interleaved in one process (the tile overlap's extra pixels are printed
separately):

    OMP_NUM_THREADS=2 /work/venv/bin/python tools/bench_enhance.py --pipeline --size 992x480 --tiles 512 \
        --batch-size 4 --rounds 3

Tiled vs whole agreement (a randomly initialised model; max and mean |tiled - whole| in 8-bit levels):

    OMP_NUM_THREADS=2 /work/venv/bin/python tools/bench_enhance.py --agreement --size 256x384 \
        --tiles 128 --overlaps 0 16 32 48 --model base
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from models.dat import DAT  # noqa: E402
from models.hat import HAT  # noqa: E402
from models.mambair import MambaIRUNet  # noqa: E402
from models.nafnet import NAFNet  # noqa: E402
from models.restormer import Restormer  # noqa: E402
from models.retinexformer import RetinexFormer  # noqa: E402
from models.retinexmamba import RetinexMamba  # noqa: E402
from utils.checkpoint import model_spec, save_checkpoint  # noqa: E402
from utils.inference import load_enhancer  # noqa: E402
from utils.tiling import _tile_starts  # noqa: E402

# HAT / DAT as train_hat.py / train_dat.py build them: upscale=1 with the pixel-shuffle restoration head
HAT_BASE = dict(upscale=1, img_size=64, window_size=16, compress_ratio=3, squeeze_factor=30, conv_scale=0.01,
                overlap_ratio=0.5, img_range=1.0, depths=[6] * 6, embed_dim=180, num_heads=[6] * 6, mlp_ratio=2.0,
                upsampler="pixelshuffle", resi_connection="1conv")
DAT_BASE = dict(upscale=1, img_size=64, img_range=1.0, split_size=[8, 32], depth=[6] * 6, embed_dim=180,
                num_heads=[6] * 6, expansion_factor=4.0, resi_connection="1conv", upsampler="pixelshuffle")
# arch: (class, {size: kwargs}); 'base': the official configuration (README's catalog and issues 14/15),
# 'demo' (Restormer): the template's CPU demo size; 'tiny': the test size.
ARCHITECTURES = {
    "restormer": (Restormer, {
        "base": {},
        "demo": dict(dim=16, num_blocks=[1, 2, 2, 2], num_refinement_blocks=1, heads=[1, 2, 4, 8]),
        "tiny": dict(dim=8, num_blocks=[1, 1, 1, 1], num_refinement_blocks=1, heads=[1, 1, 1, 1])}),
    "retinexformer": (RetinexFormer, {
        "base": dict(n_feat=40, stage=1, num_blocks=[1, 2, 2]),
        "tiny": dict(n_feat=8, stage=1, num_blocks=[1, 1, 1])}),
    "retinexmamba": (RetinexMamba, {
        "base": dict(n_feat=40, stage=1, num_blocks=[1, 2, 2], d_state=16),
        "tiny": dict(n_feat=4, stage=1, num_blocks=[1, 1, 1], d_state=2)}),
    "mambair_unet": (MambaIRUNet, {
        "base": dict(dim=48, num_blocks=[4, 6, 6, 8], num_refinement_blocks=4, mlp_ratio=1.5),
        "tiny": dict(dim=8, num_blocks=[1, 1, 1, 1], num_refinement_blocks=1, mlp_ratio=1.0)}),
    "hat": (HAT, {
        "base": HAT_BASE,
        "tiny": {**HAT_BASE, "embed_dim": 12, "depths": [1], "num_heads": [2], "window_size": 8,
                 "squeeze_factor": 4}}),
    "dat": (DAT, {
        "base": DAT_BASE,
        "tiny": {**DAT_BASE, "embed_dim": 16, "depth": [1], "num_heads": [2], "split_size": [4, 8]}}),
    "nafnet": (NAFNet, {
        "base": dict(img_channel=3, width=32, middle_blk_num=12, enc_blk_nums=[2, 2, 4, 8],
                     dec_blk_nums=[2, 2, 2, 2]),
        "tiny": dict(img_channel=3, width=8, middle_blk_num=1, enc_blk_nums=[1, 1, 1, 1],
                     dec_blk_nums=[1, 1, 1, 1])}),
}


def synthetic_photo(height: int, width: int, seed: int = 0) -> np.ndarray:
    """A smooth random photo with fine texture and a blown-out 'window', HxWx3 float32 in [0, 1]."""
    rng = np.random.default_rng(seed)
    coarse = torch.from_numpy(rng.random((1, 3, 8, 12), dtype=np.float32))
    smooth = torch.nn.functional.interpolate(coarse, size=(height, width), mode="bicubic", align_corners=False)
    photo = (smooth[0].permute(1, 2, 0).numpy() + rng.normal(0, 0.02, (height, width, 3))).clip(0, 1)
    photo[height // 8: height // 3, width // 6: width // 3] = 1.0
    return photo.astype(np.float32)


def write_checkpoint(path: Path, size: str, seed: int = 0, arch: str = "restormer") -> Path:
    torch.manual_seed(seed)
    cls, sizes = ARCHITECTURES[arch]
    if size not in sizes:
        raise SystemExit(f"error: --model {size} is not defined for --arch {arch}; choose from {', '.join(sizes)}")
    model = cls(**sizes[size])
    save_checkpoint(path, step=0, model=model, config={"model": model_spec(model, sizes[size])})
    return path


def tile_count(height: int, width: int, tile: int, overlap: int) -> int:
    """Tiles utils.tiling.tiled_forward runs on a height x width photo (1 for tile 0: the whole photo)."""
    if tile <= 0 or (height <= tile and width <= tile):
        return 1
    stride = tile - overlap
    return len(_tile_starts(height, tile, stride)) * len(_tile_starts(width, tile, stride))


def child(args) -> None:
    """One setting in this process: load, enhance once, print a JSON line."""
    torch.set_num_threads(args.threads)
    height, width = args.size
    photo = synthetic_photo(height, width)
    if args.region:
        photo = np.ascontiguousarray(photo[:args.region[0], :args.region[1]])
    start = time.perf_counter()
    enhancer = load_enhancer(args.checkpoint, args.device, amp=args.amp, tile=args.tile, overlap=args.overlap,
                             batch_size=args.batch_size)
    loaded, cpu_start = time.perf_counter(), time.process_time()
    enhancer.enhance(photo)
    done = time.perf_counter()
    # CPU seconds of the enhance call alone: on a shared machine wall time also counts other jobs
    result = {"load_s": loaded - start, "enhance_s": done - loaded, "enhance_cpu_s": time.process_time() - cpu_start}
    if enhancer.device.type == "cuda":
        result["cuda_peak_gib"] = torch.cuda.max_memory_allocated(enhancer.device) / 2 ** 30
    print(json.dumps(result), flush=True)


def run_child(args, tile: int) -> dict:
    command = [sys.executable, __file__, "--child", "--checkpoint", str(args.checkpoint), "--tile", str(tile),
               "--overlap", str(args.overlap if tile else 0), "--size", f"{args.size[1]}x{args.size[0]}",
               "--device", args.device, "--threads", str(args.threads), "--batch-size", str(args.batch_size),
               "--amp", args.amp] + (["--region", f"{args.region[1]}x{args.region[0]}"] if args.region else [])
    process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    output = process.stdout.read()
    _, status, usage = os.wait4(process.pid, 0)
    if status != 0:
        raise SystemExit(f"error: setting --tile {tile} failed (status {status})")
    result = json.loads(output.strip().splitlines()[-1])
    # ru_maxrss is in KiB on Linux
    result.update(tile=tile, peak_rss_gib=usage.ru_maxrss / 2 ** 20, cpu_s=usage.ru_utime + usage.ru_stime)
    if args.region:
        overlap = args.overlap if tile else 0
        measured, full = tile_count(*args.region, tile, overlap), tile_count(*args.size, tile, overlap)
        result.update(region_tiles=measured, photo_tiles=full, extrapolated_s=result["enhance_s"] / measured * full,
                      extrapolated_cpu_s=result["enhance_cpu_s"] / measured * full)
    return result


def available_gib() -> float:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) / 2 ** 20
    return float("inf")


def benchmark(args) -> None:
    height, width = args.size
    with tempfile.TemporaryDirectory() as folder:
        args.checkpoint = write_checkpoint(Path(folder) / "model.pt", args.model, arch=args.arch)
        results = []
        for tile in args.tiles:
            results.append(run_child(args, tile))
            print(json.dumps(results[-1]), flush=True)
        if args.whole and not args.region:
            # activation memory grows with the pixels a forward pass sees: extrapolate from the largest tile
            largest, smallest = max(results, key=lambda r: r["tile"]), min(results, key=lambda r: r["tile"])
            per_pixel = (largest["peak_rss_gib"] - smallest["peak_rss_gib"]) / (
                args.batch_size * (largest["tile"] ** 2 - smallest["tile"] ** 2))
            estimate = largest["peak_rss_gib"] + per_pixel * (height * width - args.batch_size * largest["tile"] ** 2)
            if estimate < 0.5 * available_gib():
                results.append(run_child(args, 0))
            else:
                print(f"whole image not run: about {estimate:.0f} GiB estimated, {available_gib():.0f} GiB available")
    region = f", measured on the top-left {args.region[1]}x{args.region[0]} region" if args.region else ""
    print(f"\n{args.arch} {args.model} (random weights), {width}x{height}{region}, device {args.device}, "
          f"{args.threads} threads, batch {args.batch_size}, overlap {args.overlap}, amp {args.amp}")
    print("| tile | enhance s | CPU s | peak RSS GiB |" + (" CUDA peak GiB |" if args.device != "cpu" else "")
          + (f" tiles measured / photo | {width}x{height} s (extrapolated) | CPU s (extrapolated) |"
             if args.region else ""))
    for result in results:
        row = (f"| {result['tile'] or 'whole'} | {result['enhance_s']:.1f} | {result['cpu_s']:.0f} "
               f"| {result['peak_rss_gib']:.2f} |")
        row += f" {result['cuda_peak_gib']:.2f} |" if "cuda_peak_gib" in result else ""
        if args.region:
            row += (f" {result['region_tiles']} / {result['photo_tiles']} | {result['extrapolated_s']:.0f} "
                    f"| {result['extrapolated_cpu_s']:.0f} |")
        print(row)
    return results


@torch.no_grad()
def agreement(args) -> None:
    height, width = args.size
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as folder:
        checkpoint = write_checkpoint(Path(folder) / "model.pt", args.model, arch=args.arch)
        photo = synthetic_photo(height, width)
        whole = load_enhancer(checkpoint, args.device, tile=0).enhance(photo)
        print(f"{args.arch} {args.model} (random weights), {width}x{height}: mean edit "
              f"{np.abs(whole - photo).mean() * 255:.1f}/255")
        print("| tile | overlap | max abs diff (/255) | mean abs diff (/255) | 99th percentile (/255) |")
        for tile in args.tiles:
            for overlap in args.overlaps:
                tiled = load_enhancer(checkpoint, args.device, tile=tile, overlap=overlap).enhance(photo)
                difference = np.abs(tiled - whole) * 255
                print(f"| {tile} | {overlap} | {difference.max():.2f} | {difference.mean():.3f} | "
                      f"{np.percentile(difference, 99):.2f} |", flush=True)


@torch.no_grad()
def pipeline(args) -> dict:
    """``enhance`` of one photo vs the network forwards inside it (timed by hooks in the same call) and
    vs bare forwards of exactly those tile batches, interleaved in this process: the pipeline's overhead
    (cutting, padding, blending, conversions). The tile overlap's extra pixels are counted separately."""
    torch.set_num_threads(args.threads)
    height, width = args.size
    tile = args.tiles[0]
    with tempfile.TemporaryDirectory() as folder:
        checkpoint = write_checkpoint(Path(folder) / "model.pt", args.model, arch=args.arch)
        enhancer = load_enhancer(checkpoint, args.device, amp=args.amp, tile=tile, overlap=args.overlap,
                                 batch_size=args.batch_size)
    network = enhancer.members[0].model
    photo = synthetic_photo(height, width)
    shapes, inside, started = [], [], []

    def before_forward(module, inputs):  # returns None: the inputs go through unchanged
        shapes.append(tuple(inputs[0].shape))
        started.append(time.perf_counter())

    network.register_forward_pre_hook(before_forward)
    network.register_forward_hook(lambda module, inputs, output: inside.append(time.perf_counter() - started[-1]))
    enhancer.enhance(photo)  # also the warm-up
    batches = [torch.rand(shape, device=enhancer.device) for shape in shapes]
    times = {"enhance": [], "inside": [], "bare": []}
    for _ in range(args.rounds):
        inside.clear()
        start = time.perf_counter()
        enhancer.enhance(photo)
        times["enhance"].append(time.perf_counter() - start)
        times["inside"].append(sum(inside))
        start = time.perf_counter()
        for batch in batches:
            network(batch)
        times["bare"].append(time.perf_counter() - start)
    enhance_s, inside_s, bare_s = (statistics.median(times[key]) for key in ("enhance", "inside", "bare"))
    computed = sum(batch.shape[0] * batch.shape[2] * batch.shape[3] for batch in batches)
    print(f"{args.arch} {args.model}, {width}x{height}, tile {tile}, overlap {args.overlap}, batch {args.batch_size}, "
          f"{args.threads} threads, medians of {args.rounds} interleaved rounds: {len(batches)} forward(s) of "
          f"{sorted(set(shapes))} = {computed / (height * width):.2f}x the photo's pixels (tile overlap); "
          f"enhance {enhance_s:.2f} s, of which in the network {inside_s:.2f} s (pipeline overhead "
          f"{enhance_s / inside_s:.3f}x); bare forwards of the same batches {bare_s:.2f} s "
          f"({enhance_s / bare_s:.3f}x)")
    return {"forwards": len(batches), "pixel_ratio": computed / (height * width), "enhance_s": enhance_s,
            "inside_s": inside_s, "bare_s": bare_s}


def parse_size(text: str):
    width, _, height = text.partition("x")
    return int(height), int(width)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=parse_size, default=parse_size("3296x2192"), help="WIDTHxHEIGHT of the photo")
    parser.add_argument("--tiles", type=int, nargs="+", default=[256, 512])
    parser.add_argument("--overlap", type=int, default=32, help="overlap of the timing runs")
    parser.add_argument("--overlaps", type=int, nargs="+", default=[0, 32, 64], help="overlaps for --agreement")
    parser.add_argument("--whole", action="store_true", help="also run the whole image when it fits in memory")
    parser.add_argument("--agreement", action="store_true", help="measure tiled vs whole instead of time/memory")
    parser.add_argument("--arch", choices=tuple(ARCHITECTURES), default="restormer")
    parser.add_argument("--model", choices=("base", "demo", "tiny"), default="base",
                        help="base: the architecture's official configuration; demo: Restormer only")
    parser.add_argument("--region", type=parse_size, default=None,
                        help="WIDTHxHEIGHT: time only this top-left region and extrapolate by tile count")
    parser.add_argument("--pipeline", action="store_true",
                        help="enhance vs the bare forwards of its tiles (first --tiles entry), in one process")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds of --pipeline")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--amp", choices=("none", "bf16", "fp16"), default="none")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--checkpoint", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--tile", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.region and (args.region[0] > args.size[0] or args.region[1] > args.size[1]):
        parser.error(f"--region {args.region[1]}x{args.region[0]} is larger than --size {args.size[1]}x{args.size[0]}")
    if args.child:
        child(args)
    elif args.agreement:
        agreement(args)
    elif args.pipeline:
        return pipeline(args)
    else:
        return benchmark(args)


if __name__ == "__main__":
    main()
