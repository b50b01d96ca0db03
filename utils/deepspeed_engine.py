"""DeepSpeed ZeRO for the multi-process recipes: the engine's config from the shared flags, its
initialisation, and its checkpoints in a run folder.

    context = setup_distributed(args, require_group=True)   # DeepSpeed always wants a process group
    engine = init_deepspeed(model, args, context)           # ZeRO stage, offload, bf16 from the flags
    state = DeepSpeedTrainingState(engine, config=..., plain_model=..., context=context)
    run = DistributedRun(args, state, context)              # every rank resumes, rank 0 writes
    ...
        with autocast(device, args.amp):
            pred = engine(inp)
        engine.backward(loss)
        engine.step()                                       # optimizer step on the accumulation boundary

Facts from DeepSpeed's own code (deepspeed 0.19, ``runtime/engine.py``, ``checkpoint/ds_to_universal.py``,
``utils/zero_to_fp32.py``), checked here on CPU with gloo:

- The config: ``train_micro_batch_size_per_gpu`` (--batch-size), ``gradient_accumulation_steps``
  (--grad-accum), ``train_batch_size`` = their product times the world size; ``optimizer`` AdamW
  (--lr, --weight-decay; ``torch_adam``: torch's AdamW, no kernel to build; with
  ``offload_optimizer`` DeepSpeed's CPU Adam, built on the first run); ``gradient_clipping``
  (--grad-clip); ``bf16`` / ``fp16`` (--amp: bf16 weights for the forward, fp32 master weights in the
  optimizer, set at stages 1-2 to the exact fp32 weights after DeepSpeed's cast; fp16 adds dynamic
  loss scaling, on CUDA only); ``zero_optimization.stage`` (--zero-stage)
  and ``offload_optimizer.device: cpu`` (--offload-optimizer). A ``--deepspeed-config FILE`` is merged
  over it, its keys winning (nested sections key by key); the batch sizes, lr, clipping and precision
  the engine then uses are written back into the run's config, and the resolved DeepSpeed config is
  saved as ``RUN/deepspeed_config.json``. The lr schedule is the shared linear warm-up + cosine
  (:func:`utils.training.cosine_with_warmup`) unless the file names a ``scheduler`` of DeepSpeed's.
- Checkpoints: ``engine.save_checkpoint(RUN/deepspeed, tag=step_NNNNNNN)``, every rank writing its
  partition; the client state holds ``universal_checkpoint_info`` (what ``ds_to_universal`` requires)
  and the run's state (step, RNG, config, world size, best-so-far bookkeeping; the data sampler's
  position is the step). Rank 0 then writes ``RUN/last.pt``: the one checkpoint format, its
  ``model`` the fp32 weights that ``zero_to_fp32.get_fp32_state_dict_from_zero_checkpoint``
  assembles from the partitions just written, ``deepspeed: {folder, tag, world_size}`` naming them;
  the older tags are removed. So enhance.py, evaluate.py, report.py and export.py read a DeepSpeed
  run folder (best.pt, else last.pt) like any other, without DeepSpeed and without unpickling
  DeepSpeed's files (which hold Python objects: ``zero_to_fp32`` loads them in full, done here only
  on files this run wrote).
- ZeRO refuses optimizer partitions saved at another world size. A run resumed with a different
  number of processes is converted first (rank 0, once, in this process:
  ``deepspeed.checkpoint.ds_to_universal`` into ``RUN/deepspeed/step_NNNNNNN_universal``) and loaded
  with ``checkpoint.load_universal`` set in the engine's config; stages 1-3 then resume exactly.
- best.pt (and --keep-best) hold the fp32 master weights gathered into rank 0's plain model
  (``deepspeed.utils.safe_get_full_fp32_param``, a collective) for validation.
"""
import contextlib
import copy
import io
import json
import math
import os
import shutil
from types import SimpleNamespace
from pathlib import Path

import torch

from .checkpoint import (CHECKPOINT_FORMAT, CheckpointError, atomic_save, load_checkpoint, rng_state,
                         save_checkpoint, set_rng_state)
from .training import NonFiniteLossError, cosine_with_warmup

INSTALL_HINT = "DeepSpeed is not installed: pip install -r requirements-extras.txt"
CHECKPOINT_FOLDER = "deepspeed"
RESOLVED_CONFIG_NAME = "deepspeed_config.json"
UNIVERSAL_SUFFIX = "_universal"


def import_deepspeed(device: torch.device):
    """``deepspeed``, told which accelerator to use (``DS_ACCELERATOR``, unless set: it would otherwise
    guess from what is installed); one-line install hint when missing."""
    os.environ.setdefault("DS_ACCELERATOR", "cuda" if device.type == "cuda" else "cpu")
    try:
        import deepspeed
    except ImportError as error:
        raise ImportError(INSTALL_HINT) from error
    return deepspeed


def add_deepspeed_args(parser) -> None:
    group = parser.add_argument_group("DeepSpeed")
    group.add_argument("--zero-stage", type=int, choices=(1, 2, 3), default=2,
                       help="ZeRO: 1 partitions the optimizer state over the processes, 2 also the gradients, "
                            "3 also the weights (gathered per module for its forward and backward)")
    group.add_argument("--offload-optimizer", action="store_true",
                       help="keep the optimizer state and step on the CPU (DeepSpeed's CPU Adam): less GPU memory")
    group.add_argument("--deepspeed-config", default=None, metavar="FILE",
                       help="a DeepSpeed JSON config merged over the one built from the flags (its keys win)")


def read_config_file(path) -> dict:
    """The JSON object in ``path``; one-line error when missing, malformed or not an object."""
    path = Path(path)
    try:
        config = json.loads(path.read_text())
    except OSError as error:
        raise ValueError(f"--deepspeed-config {path}: cannot read it ({error.strerror})") from error
    except json.JSONDecodeError as error:
        raise ValueError(f"--deepspeed-config {path}: not valid JSON ({error})") from error
    if not isinstance(config, dict):
        raise ValueError(f"--deepspeed-config {path}: expected a JSON object, got {type(config).__name__}")
    return config


def merge_config(base: dict, override: dict) -> dict:
    """``base`` with ``override``'s keys winning; sections (dicts) present in both are merged key by key."""
    merged = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = merge_config(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def flags_config(args, on_cuda: bool) -> dict:
    """The DeepSpeed config the shared flags and --zero-stage / --offload-optimizer describe."""
    zero = {"stage": args.zero_stage}
    if args.offload_optimizer:
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": on_cuda}
    # Without offload torch's AdamW (fused on CUDA) needs no kernel built; offload steps on the CPU
    # with DeepSpeed's vectorised CPU Adam instead.
    adam = {"lr": args.lr, "betas": [0.9, 0.999], "eps": 1e-8, "weight_decay": args.weight_decay}
    if not args.offload_optimizer:
        adam.update(torch_adam=True, **({"fused": True} if on_cuda else {}))
    return {
        "train_micro_batch_size_per_gpu": args.batch_size,
        "gradient_accumulation_steps": args.grad_accum,
        "optimizer": {"type": "AdamW", "params": adam},
        "gradient_clipping": args.grad_clip,
        "bf16": {"enabled": args.amp == "bf16"},
        "fp16": {"enabled": args.amp == "fp16"},
        "zero_optimization": zero,
        "steps_per_print": None,  # the run's own progress bar and metrics.jsonl report progress
    }


def _positive_int(config: dict, key: str, source: str):
    value = config.get(key)
    if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
        raise ValueError(f"{source}: {key} must be a positive integer, got {value!r}")
    return value


def resolve_batch(config: dict, world_size: int, source: str) -> dict:
    """Fill in DeepSpeed's three batch sizes so that train = micro x accumulation x world size: the
    ones given win, a missing one is derived (as DeepSpeed does); inconsistent ones are a one-line error."""
    config = dict(config)
    train = _positive_int(config, "train_batch_size", source)
    micro = _positive_int(config, "train_micro_batch_size_per_gpu", source)
    accum = _positive_int(config, "gradient_accumulation_steps", source)
    if train is not None and micro is not None and accum is None:
        accum, remainder = divmod(train, micro * world_size)
    elif train is not None and micro is None:
        micro, remainder = divmod(train, (accum or 1) * world_size)
    else:
        remainder = 0
    accum = accum or 1
    if micro is None or micro < 1 or remainder or (train is not None and train != micro * accum * world_size):
        raise ValueError(f"{source}: train_batch_size {train} is not train_micro_batch_size_per_gpu {micro} x "
                         f"gradient_accumulation_steps {accum} x {world_size} processes")
    config.update(train_batch_size=micro * accum * world_size, train_micro_batch_size_per_gpu=micro,
                  gradient_accumulation_steps=accum)
    return config


def precision_of(config: dict, source: str) -> str:
    """The --amp value a resolved config trains in."""
    bf16, fp16 = (bool(config.get(key, {}).get("enabled")) for key in ("bf16", "fp16"))
    if bf16 and fp16:
        raise ValueError(f"{source}: bf16 and fp16 are both enabled; enable one")
    return "bf16" if bf16 else "fp16" if fp16 else "none"


def deepspeed_config(args, world_size: int, on_cuda: bool) -> dict:
    """The engine's config: the flags' (:func:`flags_config`), --deepspeed-config merged over it, the
    batch sizes resolved. What the engine will use is written back into ``args`` (batch size,
    accumulation, lr, weight decay, clipping, precision), so the data, the schedule, the autocast of
    the loop and config.json agree with it."""
    config = flags_config(args, on_cuda)
    source = "the DeepSpeed config"
    if args.deepspeed_config:
        source = f"--deepspeed-config {args.deepspeed_config}"
        file = read_config_file(args.deepspeed_config)
        if "train_batch_size" in file:  # the file's global batch wins over the flags' per-process sizes
            derived = ("gradient_accumulation_steps" if "train_micro_batch_size_per_gpu" in file
                       else "train_micro_batch_size_per_gpu")
            if derived not in file:
                del config[derived]
        config = merge_config(config, file)
    config = resolve_batch(config, world_size, source)
    amp = precision_of(config, source)
    if amp == "fp16" and not on_cuda:
        raise ValueError(f"{source}: fp16 trains on CUDA only under DeepSpeed (its loss scaling); use bf16")
    args.batch_size, args.grad_accum = config["train_micro_batch_size_per_gpu"], config["gradient_accumulation_steps"]
    args.amp, args.grad_clip = amp, float(config.get("gradient_clipping") or 0.0)
    optimizer = config.get("optimizer", {}).get("params", {})
    args.lr, args.weight_decay = optimizer.get("lr", args.lr), optimizer.get("weight_decay", args.weight_decay)
    return config


# --------------------------------------------------------------------------- resume targets

def read_last(path) -> tuple:
    """``(last.pt's path, its content)`` for a DeepSpeed run folder or its last.pt; one-line error otherwise."""
    path = Path(path)
    path = path / "last.pt" if path.is_dir() else path
    meta = load_checkpoint(path, assemble_shards=False)
    if not isinstance(meta, dict) or not isinstance(meta.get("deepspeed"), dict):
        raise CheckpointError(f"{path} is not a DeepSpeed training checkpoint (the DeepSpeed recipes resume "
                              "from their own last.pt; to start from other weights use --pretrained)")
    return path, meta


def convert_to_universal(folder: Path, tag: str) -> str:
    """``folder/tag`` as a universal checkpoint ``folder/tag_universal`` (``ds_to_universal``, in this
    process, once); returns its tag. Run it on one rank."""
    from deepspeed.checkpoint import ds_to_universal
    universal = tag + UNIVERSAL_SUFFIX
    done = folder / universal / "done"
    if not done.is_file():
        print(f"converting {folder / tag} to a universal checkpoint (another number of processes resumes it)")
        shutil.rmtree(folder / universal, ignore_errors=True)  # an interrupted conversion
        options = SimpleNamespace(input_folder=str(folder / tag), output_folder=str(folder / universal),
                                  num_extract_workers=1, num_merge_workers=1, keep_temp_folder=False, strict=True,
                                  inject_missing_state=False)
        try:
            ds_to_universal.main(options)
        except (AssertionError, KeyError, OSError, RuntimeError) as error:
            raise CheckpointError(f"cannot convert {folder / tag} to a universal checkpoint: {error}") from error
        done.touch()
    return universal


def resume_target(path, context) -> tuple:
    """``(folder, tag, universal)`` of the DeepSpeed checkpoint behind ``path`` for this world size:
    the saved tag at the same world size, else its universal conversion (made by rank 0 if absent;
    collective)."""
    last, meta = read_last(path)
    saved = meta["deepspeed"]
    folder = last.parent / saved["folder"]
    if not (folder / saved["tag"]).is_dir():
        raise CheckpointError(f"{last} names the DeepSpeed checkpoint {folder / saved['tag']}, which is missing")
    if saved["world_size"] == context.world_size:
        return folder, saved["tag"], False
    if context.is_main:
        convert_to_universal(folder, saved["tag"])
    context.barrier()
    return folder, saved["tag"] + UNIVERSAL_SUFFIX, True


# --------------------------------------------------------------------------- the engine

def init_deepspeed(model: torch.nn.Module, args, context):
    """The DeepSpeed engine around ``model`` (on its device, --pretrained loaded) with the config of
    :func:`deepspeed_config`; under --resume at another world size the checkpoint is converted to a
    universal one first (collective). Rank 0 writes the resolved config into the run folder. DeepSpeed's
    refusals of a config come back as one line."""
    if args.compile:
        raise ValueError("--compile: not supported by the DeepSpeed recipes (the engine wraps the plain model)")
    if args.ema > 0:
        raise ValueError("--ema: the DeepSpeed recipes validate and save the live weights; pass --ema 0")
    deepspeed = import_deepspeed(context.device)
    config = deepspeed_config(args, context.world_size, context.device.type == "cuda")
    if args.resume and resume_target(args.resume, context)[2]:
        config = merge_config(config, {"checkpoint": {"load_universal": True}})
    if context.is_main:
        Path(args.out, RESOLVED_CONFIG_NAME).write_text(json.dumps(config, indent=2) + "\n")
    # bf16/fp16: DeepSpeed casts the module, then copies the fp32 master weights from the cast ones
    # (initial or --pretrained weights rounded to 8 bits of mantissa); at stages 1-2 they are reset to
    # the exact fp32 weights after it. Stage 3's setter fails on a partition's padding (deepspeed
    # 0.19.8, a parameter smaller than the world size), so there the masters start rounded.
    stage = config.get("zero_optimization", {}).get("stage", 0)
    exact = ({name: param.detach().clone() for name, param in model.named_parameters()}
             if args.amp != "none" and stage < 3 else None)
    schedule = (None if "scheduler" in config
                else lambda optimizer: cosine_with_warmup(optimizer, args.warmup, args.steps))
    trainable = [p for p in model.parameters() if p.requires_grad]
    try:
        engine, *_ = deepspeed.initialize(model=model, model_parameters=trainable, config=config,
                                          lr_scheduler=schedule, dist_init_required=False)
    except (ValueError, TypeError, AssertionError, KeyError) as error:
        lines = str(error).strip().splitlines() or [type(error).__name__]
        raise ValueError(f"DeepSpeed refused the config ({RESOLVED_CONFIG_NAME} in {args.out}): "
                         + " ".join(line.strip() for line in lines[:3])) from error
    if exact is not None:
        from deepspeed.utils import safe_set_full_fp32_param
        for name, param in engine.module.named_parameters():
            if param.requires_grad:
                safe_set_full_fp32_param(param, exact[name])
    return engine


def fp32_weights(folder: Path, tag: str) -> dict:
    """The fp32 model state dict of the ZeRO checkpoint ``folder/tag`` (any stage, any number of
    processes), assembled in this process by DeepSpeed's ``zero_to_fp32`` (which unpickles DeepSpeed's
    files in full: only for checkpoints this run just wrote)."""
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):  # its progress lines
        weights = get_fp32_state_dict_from_zero_checkpoint(str(folder), tag=tag)
    return {name: tensor.detach() for name, tensor in weights.items()}


class EngineSteps:
    """What :class:`utils.run.Run` reads of the training step, taken from the engine: whether the last
    micro-batch ended an optimizer step (the engine counts micro-batches), the lr, the gradient norm,
    and the non-finite check at logging time (DeepSpeed applies a bf16/fp32 step whatever its
    gradients, so a non-finite norm means the weights are lost; fp16 skips such steps itself)."""

    def __init__(self, engine):
        self.engine = engine

    @property
    def stepped(self) -> bool:
        return self.engine.micro_steps % self.engine.gradient_accumulation_steps() == 0

    @property
    def optimizer(self):
        return self.engine.optimizer

    @property
    def grad_norm(self) -> float:
        """The last step's global gradient norm (NaN where the config turned its computation off)."""
        norm = self.engine.get_global_grad_norm()
        return float("nan") if norm is None else float(norm)

    def check(self) -> None:
        norm = self.engine.get_global_grad_norm()
        if norm is not None and not self.engine.fp16_enabled() and not math.isfinite(float(norm)):
            raise NonFiniteLossError("the gradient norm is NaN/inf: the weights took a non-finite step; lower --lr, "
                                     "use --amp bf16 or none, or check the data for corrupt images, then resume "
                                     "from an earlier last.pt")


class DeepSpeedTrainingState:
    """The resumable state of a DeepSpeed run, with the interface :class:`utils.distributed.DistributedRun`
    drives (as :class:`utils.distributed.ShardedTrainingState`): ``gather`` the fp32 weights into rank
    0's ``plain_model`` before validation, ``save`` them (best.pt), ``save_sharded`` the engine's
    checkpoint with last.pt pointing at it, ``resume`` every rank from it. See the module docstring."""

    def __init__(self, engine, *, config: dict, plain_model, context):
        self.engine = self.model = engine
        self.train_step = EngineSteps(engine)
        self.config, self.plain_model, self.context = config, plain_model, context

    @property
    def eval_model(self) -> torch.nn.Module:
        return self.plain_model

    def gather(self) -> None:
        """Collective: the fp32 master weights (and the buffers) into rank 0's plain model."""
        from deepspeed.utils import safe_get_full_fp32_param
        full = {name: safe_get_full_fp32_param(param) for name, param in self.engine.module.named_parameters()}
        if self.context.is_main:
            full.update(self.engine.module.named_buffers())
            self.plain_model.load_state_dict(full)

    def save(self, path, step: int, extra: dict = None) -> None:
        """Rank 0: the gathered weights as an ordinary (weights-only) checkpoint."""
        save_checkpoint(path, step=step, model=self.plain_model, config=self.config, extra=extra)

    def save_sharded(self, run_dir, step: int, extra: dict) -> None:
        """Collective: the engine's checkpoint of this step, then last.pt pointing at it, then the old tags go."""
        folder, tag = Path(run_dir) / CHECKPOINT_FOLDER, f"step_{step:07d}"
        run_state = {"step": step, "rng": rng_state(), "config": self.config, "extra": extra or {},
                     "world_size": self.context.world_size}
        self.engine.save_checkpoint(str(folder), tag=tag, client_state={"universal_checkpoint_info": {},
                                                                        "rehdr_run": run_state})
        self.context.barrier()
        if self.context.is_main:
            atomic_save({"format": CHECKPOINT_FORMAT, "step": step, "config": self.config,
                         "model": fp32_weights(folder, tag), "rng": run_state["rng"],
                         "deepspeed": {"folder": CHECKPOINT_FOLDER, "tag": tag, "world_size": self.context.world_size},
                         "extra": extra or {}}, Path(run_dir) / "last.pt")
            for old in folder.iterdir():
                if old.is_dir() and old.name != tag:
                    shutil.rmtree(old, ignore_errors=True)
            (folder / "latest_universal").unlink(missing_ok=True)
        self.context.barrier()

    def resume(self, path):
        """Every rank: the engine's weights, optimizer and lr schedule from the checkpoint behind
        ``path`` (universal at another world size), the step and RNG from its client state.
        Returns ``(step, extra)``."""
        _, meta = read_last(path)
        if meta.get("config", {}).get("model") != self.config.get("model"):
            raise CheckpointError(f"{path} was trained with model {meta.get('config', {}).get('model')}, but "
                                  f"this run builds {self.config.get('model')}; pass the same model flags to resume")
        folder, tag, _ = resume_target(path, self.context)
        try:
            loaded, client = self.engine.load_checkpoint(str(folder), tag=tag)
        except (RuntimeError, ValueError, KeyError, AssertionError) as error:
            raise CheckpointError(f"cannot resume from {folder / tag}: {error}") from error
        if loaded is None or "rehdr_run" not in client:
            raise CheckpointError(f"cannot resume from {folder / tag}: DeepSpeed found no checkpoint of this "
                                  "codebase there")
        run_state = client["rehdr_run"]
        set_rng_state(run_state["rng"])
        return run_state["step"], dict(run_state["extra"])
