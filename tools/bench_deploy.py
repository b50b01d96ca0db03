"""CPU seconds per megapixel of onnxruntime vs PyTorch eager (same photo, same tile, one run each), and
photos/s of enhance.py --ray with 1 and 2 CPU actors vs plain enhance.py. README "Deploy".

    OMP_NUM_THREADS=2 /work/venv/bin/python tools/bench_deploy.py executors --arch restormer darkir \
        --size 512x384 --tile 256
    /work/venv/bin/python tools/bench_deploy.py ray --photos 4 --size 1024x768 --tile 256

Random weights (speed does not depend on them) at the architectures' published sizes (Restormer Base,
DarkIR-m; the Ray measurement: DarkIR at width 8, so it runs in minutes), written as a run checkpoint and exported with utils/export.py, then enhanced through
``load_enhancer`` (enhance.py's path without file I/O). An architecture that does not export reports
its one-line refusal instead of an onnxruntime figure.
"""
import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from data.io import write_image  # noqa: E402
from utils.checkpoint import model_spec, save_checkpoint  # noqa: E402
from utils.export import ExportBlocked, export_onnx  # noqa: E402
from utils.inference import load_enhancer  # noqa: E402

# name: (module, class, kwargs); 'darkir-w8' (DarkIR at width 8) keeps the Ray measurement short.
ARCHITECTURES = {"restormer": ("models.restormer", "Restormer", {}), "darkir": ("models.darkir", "DarkIR", {}),
                 "darkir-w8": ("models.darkir", "DarkIR", {"width": 8})}


def write_run(folder: Path, arch: str) -> Path:
    import importlib
    module, name, kwargs = ARCHITECTURES[arch]
    torch.manual_seed(0)
    model = getattr(importlib.import_module(module), name)(**kwargs)
    path = folder / arch / "best.pt"
    save_checkpoint(path, step=0, model=model, config={"model": model_spec(model, kwargs)})
    return path


def photo(height: int, width: int, seed: int = 0) -> np.ndarray:
    import cv2
    rng = np.random.default_rng(seed)
    return np.clip(cv2.resize(rng.random((6, 6, 3)).astype(np.float32), (width, height)), 0, 1)


def timed(enhancer, rgb) -> tuple:
    """(wall seconds, CPU seconds of this process, all threads) of one enhance: on a shared machine
    the wall time depends on the other load, the CPU time much less."""
    wall, cpu = time.perf_counter(), time.process_time()
    enhancer.enhance(rgb)
    return time.perf_counter() - wall, time.process_time() - cpu


def bench_executors(args, work: Path) -> None:
    width, height = map(int, args.size.split("x"))
    rgb, megapixels = photo(height, width), width * height / 1e6
    for arch in args.arch:
        checkpoint = write_run(work, arch)
        torch_wall, torch_cpu = timed(load_enhancer(checkpoint, tile=args.tile, overlap=args.overlap, batch_size=1), rgb)
        line = f"{arch}: PyTorch eager {torch_wall / megapixels:.1f} s/MP wall, {torch_cpu / megapixels:.1f} CPU-s/MP"
        try:
            (onnx_path, _), difference = export_onnx(checkpoint, work / f"{arch}_onnx")
            onnx_wall, onnx_cpu = timed(load_enhancer(onnx_path, tile=args.tile, overlap=args.overlap, batch_size=1), rgb)
            line += (f"; onnxruntime {onnx_wall / megapixels:.1f} s/MP wall, {onnx_cpu / megapixels:.1f} CPU-s/MP "
                     f"(PyTorch/onnxruntime: wall x{torch_wall / onnx_wall:.2f}, CPU x{torch_cpu / onnx_cpu:.2f}; "
                     f"export check {difference:.1e})")
        except ExportBlocked as refusal:
            line += f", onnxruntime: not exportable ({refusal})"
        print(f"{line}  [{args.size}, tile {args.tile}, overlap {args.overlap}, {torch.get_num_threads()} threads, "
              f"load average {os.getloadavg()[0]:.1f}]", flush=True)


def bench_ray(args, work: Path) -> None:
    width, height = map(int, args.size.split("x"))
    photos = work / "photos"
    photos.mkdir()
    for index in range(args.photos):
        write_image(photos / f"{index:03d}.jpg", photo(height, width, seed=index))
    checkpoint = write_run(work, args.ray_arch)
    common = [sys.executable, "enhance.py", "--checkpoint", str(checkpoint), "--input", str(photos),
              "--tile", str(args.tile), "--overlap", str(args.overlap), "--device", "cpu"]
    runs = {"plain": [], "ray 1 actor": ["--ray", "--ray-cpus", "2"], "ray 2 actors": ["--ray", "--ray-cpus", "1"]}
    for label, extra in runs.items():
        out = work / label.replace(" ", "_")
        start = time.perf_counter()
        done = subprocess.run(common + ["--out", str(out)] + extra, capture_output=True, text=True,
                              cwd=Path(__file__).resolve().parents[1])
        seconds = time.perf_counter() - start
        reported = [line for line in done.stdout.splitlines() if line.startswith(("ray:", "enhanced"))]
        print(f"{label}: {args.photos / seconds:.3f} photos/s over {seconds:.1f} s wall (process start included; "
              f"exit {done.returncode}, load average {os.getloadavg()[0]:.1f}) | {' '.join(reported)}", flush=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("what", choices=("executors", "ray"))
    parser.add_argument("--arch", nargs="+", choices=sorted(ARCHITECTURES), default=["restormer", "darkir"])
    parser.add_argument("--ray-arch", choices=sorted(ARCHITECTURES), default="darkir-w8")
    parser.add_argument("--size", default="512x384", help="WIDTHxHEIGHT of the photo(s)")
    parser.add_argument("--tile", type=int, default=256)
    parser.add_argument("--overlap", type=int, default=32)
    parser.add_argument("--photos", type=int, default=8)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-deploy-"))
    try:
        (bench_executors if args.what == "executors" else bench_ray)(args, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
