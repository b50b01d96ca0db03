"""Seconds and peak memory of one selective-scan forward + backward, per implementation and image size.

The sequence is an image of S x S pixels read as one scan (L = S * S), with ``--dim`` channels,
``--d-state`` states and per-step B/C (one group), as SS2D calls it. Implementations:
``torch`` (models.scan.selective_scan_torch), ``naive`` (the step-by-step reference loop) and, on CUDA
with mamba_ssm installed, ``mamba_ssm`` (its fused kernel). Each measurement runs in a fresh process so
the CPU peak (resident memory above the process's level before the scan) is its own; on CUDA the peak
is ``torch.cuda.max_memory_allocated`` above the inputs.

Reproduce the CPU table of the MambaIR report (one thread, small dims):

    OMP_NUM_THREADS=1 /work/venv/bin/python tools/bench_scan.py --device cpu --dim 16 --sizes 64 128 256

On a GPU, e.g. ``--device cuda --dim 768 --sizes 64 128 256`` (SS2D of a 96-wide MambaIR block: 4
directions x 2 x 96 channels).
"""

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from models.scan import mamba_ssm_scan, selective_scan_naive, selective_scan_torch  # noqa: E402

IMPLEMENTATIONS = ("torch", "naive", "mamba_ssm")


def _resident_bytes() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * resource.getpagesize()


def _inputs(batch, dim, d_state, length, device):
    gen = torch.Generator(device="cpu").manual_seed(0)
    make = lambda *shape: torch.randn(*shape, generator=gen).to(device)  # noqa: E731
    return dict(u=make(batch, dim, length), delta=make(batch, dim, length) * 0.5,
                A=-torch.exp(make(dim, d_state)), B=make(batch, 1, d_state, length),
                C=make(batch, 1, d_state, length), D=make(dim), delta_bias=make(dim) * 0.3)


def measure(impl: str, size: int, batch: int, dim: int, d_state: int, device: str) -> dict:
    """One forward + backward of ``impl`` at an S x S image: seconds (the better of two runs for the
    parallel scans, one run for the naive loop) and the first run's peak MiB above the inputs."""
    device = torch.device(device)
    scan = {"torch": selective_scan_torch, "naive": selective_scan_naive, "mamba_ssm": mamba_ssm_scan()}[impl]
    if scan is None:
        return {"error": "mamba_ssm is not installed"}
    leaves = {k: v.requires_grad_() for k, v in _inputs(batch, dim, d_state, size * size, device).items()}
    runs = 1 if impl == "naive" else 2
    seconds, peaks = [], []
    for _ in range(runs):
        for leaf in leaves.values():
            leaf.grad = None
        if device.type == "cuda":
            torch.cuda.synchronize(device)
            torch.cuda.reset_peak_memory_stats(device)
            base = torch.cuda.memory_allocated(device)
        else:
            base = _resident_bytes()
        start = time.perf_counter()
        scan(**leaves, delta_softplus=True).sum().backward()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
            peak = torch.cuda.max_memory_allocated(device) - base
        else:
            peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - base
        seconds.append(time.perf_counter() - start)
        peaks.append(peak)
    # memory from the first run: the allocator keeps freed pages, so a later run's baseline is inflated
    return {"seconds": min(seconds), "peak_mib": peaks[0] / 2 ** 20}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--dim", type=int, default=16, help="channels of the scan (SS2D: 4 x d_inner)")
    parser.add_argument("--d-state", type=int, default=16)
    parser.add_argument("--sizes", type=int, nargs="+", default=[64, 128, 256], help="image sides S (L = S * S)")
    parser.add_argument("--impls", nargs="+", choices=IMPLEMENTATIONS, default=list(IMPLEMENTATIONS))
    parser.add_argument("--naive-max-size", type=int, default=128,
                        help="skip the naive loop above this side (on one CPU thread it needs minutes at 128)")
    parser.add_argument("--one", nargs=2, metavar=("IMPL", "SIZE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        impl, size = args.one[0], int(args.one[1])
        print(json.dumps(measure(impl, size, args.batch, args.dim, args.d_state, args.device)))
        return

    impls = [i for i in args.impls if i != "mamba_ssm" or args.device.startswith("cuda")]
    print(f"selective scan forward+backward: device {args.device}, batch {args.batch}, dim {args.dim}, "
          f"d_state {args.d_state}, torch {torch.__version__}")
    print("| image | L | " + " | ".join(f"{i} s | {i} peak MiB" for i in impls) + " |")
    print("|---|---|" + "---|---|" * len(impls))
    shared = ["--batch", str(args.batch), "--dim", str(args.dim), "--d-state", str(args.d_state),
              "--device", args.device]
    for size in args.sizes:
        cells = []
        for impl in impls:
            if impl == "naive" and size > args.naive_max_size:
                cells += ["skipped", "-"]
                continue
            done = subprocess.run([sys.executable, __file__, "--one", impl, str(size), *shared],
                                  capture_output=True, text=True)
            if done.returncode:
                cells += ["failed", (done.stderr.strip().splitlines() or [f"exit {done.returncode}"])[-1][:60]]
                continue
            result = json.loads(done.stdout.strip().splitlines()[-1])
            if "error" in result:
                cells += ["n/a", result["error"]]
            else:
                cells += [f"{result['seconds']:.3f}", f"{result['peak_mib']:.0f}"]
        print(f"| {size}x{size} | {size * size} | " + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
    main()
