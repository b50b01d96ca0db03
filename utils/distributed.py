"""Data-parallel training with the field's own launchers: what every multi-process recipe shares.

    dist = setup_distributed(args)                       # process group from torchrun's environment
    model = Restormer(...).to(dist.device)
    train_model = wrap_ddp(model, dist)                  # DDP when there is a process group
    run = DistributedRun(args, state, dist)              # every rank resumes, rank 0 writes
    batches = run.train_batches(train_set)               # each rank its share of every batch
    ...
    if __name__ == "__main__":
        run_distributed_cli(main)                        # clean gloo/NCCL shutdown

Launched by ``torchrun --nproc_per_node N script.py ...`` (which sets RANK, WORLD_SIZE, LOCAL_RANK,
MASTER_ADDR/PORT); without torchrun a recipe runs as one ordinary process (world size 1, no process
group), so the single-process tests and the CPU demo run the same code. Backend: NCCL on CUDA
(one GPU per process, ``cuda:LOCAL_RANK``), gloo on CPU.

Who does what: every rank builds the same model from the same seed (DDP broadcasts rank 0's weights
anyway), reads the same checkpoint on --resume, and trains on its share of each batch
(:class:`data.loaders.ResumableBatchSampler`: W processes with --batch-size B see exactly what one
process with B*W sees, so a run resumes on a different number of processes if W*B is kept). Rank 0
alone writes the run folder (config.json, metrics.jsonl, samples, checkpoints) and validates; the
logged losses are the mean over all ranks.
"""
import datetime
import os
import sys
from dataclasses import dataclass

import torch
import torch.distributed as dist
from tqdm import tqdm

from .cli import run_cli
from .run import Run, setup

# Rank 0 validates whole photos and writes checkpoints while the others wait in their next
# collective: the default timeouts (NCCL 10 min) are too short for a large validation set.
PROCESS_GROUP_TIMEOUT = datetime.timedelta(hours=2)


@dataclass(frozen=True)
class Distributed:
    """This process's place in the job: its rank of ``world_size``, its local rank on this node and
    its device; ``active`` when a process group exists (launched by torchrun)."""
    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    active: bool

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.active:
            dist.barrier()


def init_distributed(device_name: str) -> Distributed:
    """Join the process group that torchrun's environment describes (NCCL on CUDA, gloo on CPU);
    without torchrun (no WORLD_SIZE) one process, no group. On CUDA each process takes
    ``cuda:LOCAL_RANK``."""
    launched = "WORLD_SIZE" in os.environ
    rank, world_size = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    device = torch.device(device_name)
    if device.type == "cuda":
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    if launched and not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo", timeout=PROCESS_GROUP_TIMEOUT,
                                device_id=device if device.type == "cuda" else None)
    return Distributed(rank, world_size, local_rank, device, active=dist.is_initialized())


def setup_distributed(args) -> Distributed:
    """:func:`utils.run.setup` (seed, backend, run folder) after joining the process group; sets
    ``args.device`` to this rank's device and records the world size in the config."""
    context = init_distributed(args.device)
    args.device = str(context.device)
    args.world_size = context.world_size
    setup(args)
    return context


def wrap_ddp(model: torch.nn.Module, context: Distributed) -> torch.nn.Module:
    """``model`` (already on its device) inside DistributedDataParallel when there is a process
    group, else itself. Checkpoints keep the plain module's names (:func:`utils.checkpoint.unwrap_model`)."""
    if not context.active:
        return model
    device_ids = [context.device.index] if context.device.type == "cuda" else None
    return torch.nn.parallel.DistributedDataParallel(model, device_ids=device_ids)


class _NoLogger:
    """What a non-zero rank logs to: nothing."""

    def log(self, step, split, values) -> None:
        pass

    def close(self) -> None:
        pass


class DistributedRun(Run):
    """:class:`utils.run.Run` across the ranks of a data-parallel job: every rank resumes from the
    same checkpoint and counts the same steps; rank 0 alone writes the run folder, shows the progress
    bar and validates; the logged training losses are averaged over the ranks (one all-reduce per
    logging interval); throughput counts the images of all ranks."""

    def __init__(self, args, state, context: Distributed, **kwargs):
        self.context = context
        self.rank, self.world_size = context.rank, context.world_size
        super().__init__(args, state, context.device, **kwargs)

    def open_outputs(self) -> None:
        if self.context.is_main:
            super().open_outputs()
        else:
            self.logger = _NoLogger()

    def progress_bar(self) -> tqdm:
        bar = super().progress_bar()
        bar.disable = not self.context.is_main
        return bar

    def log_train(self) -> dict:
        if self.context.active and self.tracker.sums:
            names = list(self.tracker.sums)
            total = torch.stack([self.tracker.sums[name] for name in names])
            dist.all_reduce(total)
            self.tracker.sums = dict(zip(names, total / self.world_size))
        return super().log_train()

    def log_identity(self) -> dict:
        return super().log_identity() if self.context.is_main else {}

    def validate(self) -> dict:
        return super().validate() if self.context.is_main else {}

    def save_last(self) -> None:
        if self.context.is_main:
            super().save_last()

    def print_summary(self) -> None:
        if self.context.is_main:
            super().print_summary()


def shutdown() -> None:
    """Leave the process group cleanly: wait for every rank, then destroy it."""
    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def run_distributed_cli(main) -> None:
    """:func:`utils.cli.run_cli` for a recipe torchrun may launch. After a process-group run every rank
    waits for the others, leaves the group, flushes and ends with ``os._exit``: gloo can abort at
    interpreter exit (SIGABRT, "terminate called without an active exception", an upstream shutdown
    bug), which would fail a finished run. A rank that failed exits at once with its code (torchrun
    then stops the others)."""
    code = 0
    try:
        run_cli(main)
    except SystemExit as error:
        code = error.code if isinstance(error.code, int) else 1
    if not dist.is_initialized():
        sys.exit(code)
    if code == 0:
        shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
