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
import shutil
import socket
import sys
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist
from tqdm import tqdm

from .checkpoint import (CHECKPOINT_FORMAT, CheckpointError, atomic_save, load_checkpoint, rng_state,
                         save_checkpoint, set_rng_state)
from .cli import run_cli
from .run import Run, setup
from .training import TrainingState

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


def init_distributed(device_name: str, require_group: bool = False) -> Distributed:
    """Join the process group that torchrun's environment describes (NCCL on CUDA, gloo on CPU);
    without torchrun (no WORLD_SIZE) one process, no group, unless ``require_group`` (DeepSpeed
    needs one): then a group of this one process on a free local port (and LOCAL_RANK 0, which
    DeepSpeed reads); the environment is otherwise left alone, so a later in-process run is not
    taken for a torchrun one. On CUDA each process takes ``cuda:LOCAL_RANK``."""
    launched = "WORLD_SIZE" in os.environ
    rank, world_size = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    device = torch.device(device_name)
    if device.type == "cuda":
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    if (launched or require_group) and not dist.is_initialized():
        single = {} if launched else {"init_method": f"tcp://127.0.0.1:{_free_port()}", "rank": 0, "world_size": 1}
        if not launched:
            os.environ.setdefault("LOCAL_RANK", "0")
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo", timeout=PROCESS_GROUP_TIMEOUT,
                                device_id=device if device.type == "cuda" else None, **single)
    return Distributed(rank, world_size, local_rank, device, active=dist.is_initialized())


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def setup_distributed(args, require_group: bool = False) -> Distributed:
    """:func:`utils.run.setup` (seed, backend, run folder) after joining the process group (see
    :func:`init_distributed`); sets ``args.device`` to this rank's device and records the world size
    in the config."""
    context = init_distributed(args.device, require_group)
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


def wrap_fsdp(model: torch.nn.Module, context: Distributed, amp: str, block_types) -> torch.nn.Module:
    """Shard ``model`` in place with FSDP2 (``fully_shard`` over a 1-D device mesh of all ranks): each
    module of ``block_types`` (the transformer / state-space blocks) is one unit, gathered just before
    its forward and freed after, the rest goes with the root. ``amp`` 'bf16': bf16 parameters and
    activations, gradients reduced in fp32, fp32 master weights in the optimizer; fp16 is refused
    (it would need a sharded loss scaler; use bf16). Without a process group the model stays plain.
    Take :func:`utils.checkpoint.model_spec` before: sharding changes the module's class."""
    if amp == "fp16":
        raise ValueError("--amp fp16: the FSDP recipes train in bf16 (--amp bf16) or fp32 (--amp none)")
    if not context.active:
        return model
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard
    mesh = init_device_mesh(context.device.type, (context.world_size,))
    policy = (MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32) if amp == "bf16"
              else MixedPrecisionPolicy())
    for module in model.modules():
        if isinstance(module, block_types):
            fully_shard(module, mesh=mesh, mp_policy=policy)
    fully_shard(model, mesh=mesh, mp_policy=policy)
    return model


class ShardedTrainingState(TrainingState):
    """:class:`utils.training.TrainingState` of a model sharded over the ranks (FSDP2).

    Resumable checkpoints are ``torch.distributed.checkpoint`` (DCP) folders, every rank writing its
    shards of the model and optimizer into ``RUN/sharded/step_NNNNNNN/``, and ``RUN/last.pt`` (rank 0,
    written after the shards, atomically) holding the step, config, lr schedule, RNG, extra and the
    shard folder's name; the previous shard folder is then removed. DCP stores tensors by parameter
    name, not by rank, so a run resumes on any number of processes (and without a process group:
    one plain model). The validated weights (best.pt and --keep-best) are full-weight checkpoints
    from a plain copy of the model on rank 0 (``plain_model``), which :meth:`gather` fills; every
    tool that reads a run reads them, and a sharded last.pt as well
    (:func:`utils.checkpoint.load_checkpoint`). EMA is not kept (sharded weights).
    """

    def __init__(self, *, model, train_step, config: dict, plain_model, context: Distributed):
        if train_step.ema is not None:
            raise ValueError("--ema: the sharded recipes validate and save the live weights; pass --ema 0")
        super().__init__(model=model, train_step=train_step, config=config)
        self.plain_model, self.context = plain_model, context

    @property
    def eval_model(self) -> torch.nn.Module:
        return self.plain_model

    def gather(self) -> None:
        """Collective: the full weights into rank 0's plain model."""
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
        full = get_model_state_dict(self.model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        if self.context.is_main:
            self.plain_model.load_state_dict(full)

    def save(self, path, step: int, extra: dict = None) -> None:
        """Rank 0: the gathered full weights as an ordinary (weights-only, not resumable) checkpoint."""
        save_checkpoint(path, step=step, model=self.plain_model, config=self.config, extra=extra)

    def _model_and_optimizer(self) -> dict:
        from torch.distributed.checkpoint.state_dict import get_state_dict
        model, optimizer = get_state_dict(self.model, self.optimizer)
        return {"model": model, "optimizer": optimizer}

    def save_sharded(self, run_dir, step: int, extra: dict) -> None:
        """Collective: this step's DCP folder, then last.pt pointing at it, then the old folder goes."""
        import torch.distributed.checkpoint as dcp
        run_dir = Path(run_dir)
        name = f"sharded/step_{step:07d}"
        dcp.save(self._model_and_optimizer(), checkpoint_id=str(run_dir / name), no_dist=not self.context.active)
        self.context.barrier()
        if self.context.is_main:
            atomic_save({"format": CHECKPOINT_FORMAT, "step": step, "config": self.config, "model": None,
                         "sharded": name, "scheduler": self.scheduler.state_dict(), "rng": rng_state(),
                         "extra": extra or {}}, run_dir / "last.pt")
            for old in (run_dir / "sharded").iterdir():
                if old.name != Path(name).name:
                    shutil.rmtree(old, ignore_errors=True)
        self.context.barrier()

    def resume(self, path):
        """Every rank: the step, schedule and RNG from last.pt, its shards into this rank's model and
        optimizer (resharded to this world size). Returns ``(step, extra)``."""
        import torch.distributed.checkpoint as dcp
        from torch.distributed.checkpoint.state_dict import set_state_dict
        path = Path(path)
        path = path / "last.pt" if path.is_dir() else path
        meta = load_checkpoint(path, assemble_shards=False)
        if not isinstance(meta, dict) or not meta.get("sharded"):
            raise CheckpointError(f"{path} is not a sharded training checkpoint (FSDP runs resume from their "
                                  "own last.pt; to start from other weights use --pretrained)")
        if meta.get("config", {}).get("model") != self.config.get("model"):
            raise CheckpointError(f"{path} was trained with model {meta.get('config', {}).get('model')}, but "
                                  f"this run builds {self.config.get('model')}; pass the same model flags to resume")
        state = self._model_and_optimizer()
        try:
            dcp.load(state, checkpoint_id=str(path.parent / meta["sharded"]), no_dist=not self.context.active)
            set_state_dict(self.model, self.optimizer, model_state_dict=state["model"],
                           optim_state_dict=state["optimizer"])
            self.scheduler.load_state_dict(meta["scheduler"])
        except (RuntimeError, ValueError, KeyError) as error:
            raise CheckpointError(f"cannot resume from {path}: {error}") from error
        set_rng_state(meta["rng"])
        return meta["step"], dict(meta.get("extra", {}))


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
    logging interval); throughput counts the images of all ranks. With a sharded state
    (:class:`ShardedTrainingState`, :class:`utils.deepspeed_engine.DeepSpeedTrainingState`: it has
    ``gather`` and ``save_sharded``) every rank takes part in gathering the weights for validation
    and in writing last.pt's shards."""

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
        return super().progress_bar(disable=not self.context.is_main)

    def log_train(self) -> dict:
        if self.context.active and self.tracker.sums:
            names = list(self.tracker.sums)
            total = torch.stack([self.tracker.sums[name] for name in names])
            dist.all_reduce(total)
            self.tracker.sums = dict(zip(names, total / self.world_size))
        return super().log_train()

    def log_identity(self) -> dict:
        return super().log_identity() if self.context.is_main else {}

    @property
    def sharded(self) -> bool:
        """The state is sharded over the ranks (FSDP2, DeepSpeed): gathering and saving are collective."""
        return hasattr(self.state, "save_sharded")

    def validate(self) -> dict:
        if self.sharded:
            self.state.gather()
        return super().validate() if self.context.is_main else {}

    def save_last(self) -> None:
        if self.sharded:
            self.state.save_sharded(self.dir, self.step, self.checkpoint_extra())
        elif self.context.is_main:
            super().save_last()

    def print_summary(self) -> None:
        if self.context.is_main:
            super().print_summary()


def shutdown() -> None:
    """Leave the process group cleanly: wait for every rank, then destroy it; through DeepSpeed when it
    is loaded (it keeps references to the groups, which its own destroy releases: a later group in
    this process then starts clean)."""
    if dist.is_initialized():
        dist.barrier()
        if "deepspeed.comm" in sys.modules:
            sys.modules["deepspeed.comm"].destroy_process_group()
        else:
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
