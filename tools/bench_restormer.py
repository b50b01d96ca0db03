"""Time one Restormer training step (forward + L1 backward + AdamW step) per attention kernel.

Reproduce the CPU numbers in the Restormer report (Base, batch 1, 128x128, 2 threads):

    OMP_NUM_THREADS=2 /work/venv/bin/python tools/bench_restormer.py --device cpu --threads 2 \
        --batch 1 --size 128 --warmup 2 --steps 5

On a GPU, e.g. ``--device cuda --batch 4 --size 512``. Prints one line per kernel: mean and min seconds per step.
"""

import argparse
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from models import Restormer  # noqa: E402


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_train_steps(model: Restormer, batch: int, size: int, warmup: int, steps: int) -> list[float]:
    """Seconds per training step for ``steps`` steps after ``warmup`` untimed ones."""
    device = next(model.parameters()).device
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    inputs = torch.rand(batch, model.inp_channels, size, size, device=device)
    targets = torch.rand(batch, model.out_channels, size, size, device=device)
    durations = []
    for step in range(warmup + steps):
        _synchronize(device)
        start = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        F.l1_loss(model(inputs), targets).backward()
        optimizer.step()
        _synchronize(device)
        if step >= warmup:
            durations.append(time.perf_counter() - start)
    return durations


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda")
    parser.add_argument("--threads", type=int, default=2, help="CPU threads (torch.set_num_threads)")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--size", type=int, default=128, help="square crop side in pixels")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps first")
    parser.add_argument("--steps", type=int, default=5, help="timed steps")
    parser.add_argument("--kernels", nargs="+", default=["fused", "matmul"], choices=["fused", "matmul"])
    parser.add_argument("--grad-checkpoint", action="store_true", help="checkpoint transformer blocks")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    for kind in args.kernels:
        torch.manual_seed(0)
        model = Restormer.base(attention=kind, grad_checkpoint=args.grad_checkpoint).to(device).train()
        durations = time_train_steps(model, args.batch, args.size, args.warmup, args.steps)
        print(
            f"restormer-base attention={kind} device={device} threads={args.threads} batch={args.batch} "
            f"size={args.size}: mean {sum(durations) / len(durations):.3f} s/step, min {min(durations):.3f} s "
            f"({len(durations)} steps after {args.warmup} warm-up)"
        )


if __name__ == "__main__":
    main()
