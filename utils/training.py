"""Training plumbing the scripts share: device/seed/AMP setup, AdamW + cosine schedule, EMA,
one optimizer step with a non-finite guard, loss bookkeeping, and save/resume of the full state.

Nothing here owns the training loop: every script writes its own loop and calls these pieces.
"""
import contextlib
import copy
import math
import random

import numpy as np
import torch

from .checkpoint import CheckpointError, load_checkpoint, save_checkpoint, set_rng_state, unwrap_model


class NonFiniteLossError(RuntimeError):
    """Raised when the loss was NaN/inf for too many consecutive steps."""


# --------------------------------------------------------------------------- setup

def select_device(name: str = "auto") -> torch.device:
    """'auto' picks CUDA when available, else CPU; anything else is passed to torch.device."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {name}: CUDA is not available on this machine (use --device cpu)")
    return device


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def configure_backend(device: torch.device) -> None:
    """Fast defaults on CUDA: cuDNN autotuning for fixed crop sizes, TF32 matmuls/convolutions."""
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True


def resolve_amp(amp, device: torch.device) -> str:
    """None means automatic: bf16 on a CUDA device that supports it, otherwise full fp32."""
    if amp is not None:
        return amp
    if device.type == "cuda" and torch.cuda.is_bf16_supported():
        return "bf16"
    return "none"


def amp_dtype(amp: str):
    """The autocast dtype of an --amp value (None for 'none')."""
    return {"none": None, "bf16": torch.bfloat16, "fp16": torch.float16}[amp]


def autocast(device: torch.device, amp: str):
    """Mixed-precision context for the forward pass; master weights stay fp32."""
    if amp == "none":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=amp_dtype(amp))


def make_grad_scaler(amp: str, device: torch.device) -> torch.amp.GradScaler:
    """Loss scaling only for fp16 (bf16 has fp32's range and needs none)."""
    return torch.amp.GradScaler(device.type, enabled=amp == "fp16")


# --------------------------------------------------------------------------- optimisation

OPTIMIZERS = {"adamw": torch.optim.AdamW, "adam": torch.optim.Adam}
SCHEDULES = ("cosine", "multistep")


def build_optimizer(model: torch.nn.Module, lr: float, weight_decay: float,
                    betas=(0.9, 0.999), kind: str = "adamw", extra_groups=()) -> torch.optim.Optimizer:
    """AdamW (decoupled weight decay) or Adam (L2 weight decay, BasicSR's recipes) over the trainable
    parameters; the fused kernel (CPU and CUDA) also lets :class:`TrainStep` skip a bad step without
    a host sync. ``extra_groups``: further param-group dicts (e.g. a loss's learned weights with
    their own lr), stepped, scheduled and clipped together with the model's."""
    if kind not in OPTIMIZERS:
        raise ValueError(f"--optimizer must be one of {', '.join(OPTIMIZERS)}, got {kind!r}")
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [{"params": params}] + [dict(group) for group in extra_groups]
    return OPTIMIZERS[kind](groups, lr=lr, weight_decay=weight_decay, betas=betas, fused=True)


def cosine_with_warmup(optimizer, warmup_steps: int, total_steps: int, min_lr_ratio: float = 0.01):
    """Linear warm-up over ``warmup_steps`` to the base lr, then cosine decay to
    ``min_lr_ratio * lr`` at ``total_steps``. Stepped once per optimizer step."""
    def lr_factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
        return min_lr_ratio + (1.0 - min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor)


def multistep_with_warmup(optimizer, warmup_steps: int, milestones, gamma: float):
    """Linear warm-up over ``warmup_steps`` to the base lr, then the lr times ``gamma`` at each of
    the ``milestones`` (optimizer steps) passed: BasicSR's MultiStepLR. Stepped once per optimizer step."""
    milestones = sorted(int(m) for m in milestones)

    def lr_factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        return gamma ** sum(step >= milestone for milestone in milestones)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor)


def split_steps(total_steps: int, fractions) -> list:
    """``total_steps`` cut into consecutive periods in proportion to ``fractions`` (summing exactly)."""
    if not fractions or any(f <= 0 for f in fractions):
        raise ValueError(f"cycle fractions must be positive, got {list(fractions)}")
    scale = total_steps / sum(fractions)
    ends = [round(scale * sum(fractions[:i + 1])) for i in range(len(fractions))]
    return [max(1, end - start) for start, end in zip([0] + ends[:-1], ends)]


def cosine_restarts(optimizer, total_steps: int, fractions, eta_mins, restart_weights=None,
                    warmup_steps: int = 0):
    """BasicSR's ``CosineAnnealingRestartCyclicLR`` (the Retinexformer / RetinexMamba recipe) over
    ``total_steps`` cut into periods by ``fractions`` (:func:`split_steps`): in period i, starting at
    step s_i with length P_i,

        lr(t) = eta_i + w_i * (base_lr - eta_i) * (1 + cos(pi * (t - s_i) / P_i)) / 2

    with ``eta_mins[i]`` = eta_i and ``restart_weights[i]`` = w_i (default 1). Each period starts at
    ``w_i * base_lr + (1 - w_i) * eta_i`` and ends at eta_i, so an eta above the base lr makes a rising
    period (the official files: base 2e-4, etas (3e-4, 1e-6), periods 46k + 104k of 150k steps: up to
    3e-4, restart at 2e-4, down to 1e-6). Beyond ``total_steps`` the lr stays at the last eta. An
    optional linear warm-up scales the first ``warmup_steps`` (official: none).
    Stepped once per optimizer step."""
    periods = split_steps(total_steps, fractions)
    weights = list(restart_weights) if restart_weights is not None else [1.0] * len(periods)
    if not len(eta_mins) == len(weights) == len(periods):
        raise ValueError(f"one eta_min and one restart weight per cycle: {len(periods)} cycles, "
                         f"{len(eta_mins)} eta_mins, {len(weights)} restart weights")
    starts = [sum(periods[:i]) for i in range(len(periods))]

    def lr_at(base_lr: float, step: int) -> float:
        index = next((i for i in reversed(range(len(periods))) if step >= starts[i]), 0)
        progress = min(1.0, (step - starts[index]) / periods[index])
        eta = eta_mins[index]
        lr = eta + weights[index] * 0.5 * (base_lr - eta) * (1.0 + math.cos(math.pi * progress))
        return lr * min(1.0, (step + 1) / warmup_steps) if warmup_steps > 0 else lr

    factors = [lambda step, base=group["lr"]: lr_at(base, step) / base for group in optimizer.param_groups]
    return torch.optim.lr_scheduler.LambdaLR(optimizer, factors)


class EMA:
    """Exponential moving average of a model's weights, kept in a separate eval-mode copy.

    The decay warms up as min(decay, (1 + t) / (10 + t)) at update t, so a short run's average is
    not dominated by the random initialisation. ``state_dict()`` is a plain model state_dict, so
    EMA weights load anywhere a model's do.
    """

    def __init__(self, model: torch.nn.Module, decay: float):
        self.decay = decay
        self.source = unwrap_model(model)
        self.module = copy.deepcopy(self.source).eval().requires_grad_(False)
        self.num_updates = 0
        # Running statistics are written by the normalisation kernels without bumping the version
        # counter, so they are copied at every update.
        self._running_stats = {
            f"{prefix}.{name}" if prefix else name
            for prefix, module in self.source.named_modules() if getattr(module, "track_running_stats", False)
            for name, _ in module.named_buffers(recurse=False)
        }
        self._copied_buffers = self._buffer_versions()

    def _buffer_versions(self) -> dict:
        """name -> (source buffer, its storage address, its in-place version counter) as of now."""
        return {name: (buffer, buffer.data_ptr(), buffer._version) for name, buffer in self.source.named_buffers()}

    @torch.no_grad()
    def update(self) -> None:
        """Move the average towards the source model's current weights; copy the buffers that changed.

        Copied: running statistics (BatchNorm, InstanceNorm with track_running_stats) always, and any
        other buffer a module reassigned or wrote in place since the last copy (in-place writes bump
        a tensor's version counter; writes through ``.data`` do not and are not followed). Static
        buffers (attention masks, position indices: ~75 MB in DAT) are not copied every step.
        """
        self.num_updates += 1
        decay = min(self.decay, (1 + self.num_updates) / (10 + self.num_updates))
        source = self.source
        ema_params = [p for p in self.module.parameters()]
        model_params = [p.detach() for p in source.parameters()]
        torch._foreach_lerp_(ema_params, model_params, 1.0 - decay)
        current = self._buffer_versions()
        changed = [name for name, (buffer, address, version) in current.items()
                   if name in self._running_stats or name not in self._copied_buffers
                   or self._copied_buffers[name][0] is not buffer or self._copied_buffers[name][1:] != (address, version)]
        if changed:
            ema_buffers = dict(self.module.named_buffers())
            for name in changed:
                ema_buffers[name].copy_(current[name][0])
        self._copied_buffers = current

    def state_dict(self) -> dict:
        return self.module.state_dict()

    def load_state_dict(self, state_dict: dict, num_updates: int) -> None:
        self.module.load_state_dict(state_dict)
        self.num_updates = num_updates
        self._copied_buffers = {}  # the next update copies every buffer from the (resumed) source


class TrainStep:
    """backward -> (unscale) -> clip -> optimizer step -> lr schedule -> EMA, with a non-finite guard.

    Gradient accumulation (``grad_accum`` N > 1): every call is one micro-batch; its loss is scaled by
    1/N and backwarded, and only every N-th call clips, steps, schedules and updates the EMA.
    ``stepped`` says whether the last call stepped (:meth:`utils.run.Run.end_step` counts optimizer
    steps by it). Under DistributedDataParallel (``ddp``, the wrapper the loop calls) the first N-1
    micro-batches must not all-reduce: DDP decides that in its forward from
    ``require_backward_grad_sync`` (the flag ``DDP.no_sync()`` toggles), so each call sets the flag
    for the next micro-batch's forward: on for the last micro-batch of a step, off otherwise.

    A step whose loss or gradient norm is NaN/inf is skipped without a host-device sync: the fused
    AdamW kernel takes a ``found_inf`` flag (the mechanism GradScaler uses), and the count of
    consecutive bad losses stays on the device until :meth:`check` reads it at logging time; it
    raises :class:`NonFiniteLossError` if ``max_bad_steps`` losses in a row were non-finite.
    """

    def __init__(self, optimizer, scheduler, scaler, grad_clip: float = 0.0, ema: EMA = None,
                 max_bad_steps: int = 5, grad_accum: int = 1, ddp=None):
        if grad_accum < 1:
            raise ValueError(f"--grad-accum must be >= 1, got {grad_accum}")
        self.optimizer, self.scheduler, self.scaler, self.ema = optimizer, scheduler, scaler, ema
        self.grad_clip, self.max_bad_steps = grad_clip, max_bad_steps
        self.grad_accum, self.ddp = grad_accum, ddp
        self.params = [p for group in optimizer.param_groups for p in group["params"]]
        device = self.params[0].device
        self.bad_streak = torch.zeros((), device=device)
        self.worst_streak = torch.zeros((), device=device)
        self.grad_norm = torch.zeros((), device=device)
        self.micro_batch, self.stepped = 0, False
        self.bad_micro_batch = torch.zeros((), device=device)
        self._arrange_sync()

    def _arrange_sync(self) -> None:
        """DDP all-reduces in the backward of the step's last micro-batch only."""
        if self.ddp is not None:
            self.ddp.require_backward_grad_sync = self.micro_batch == self.grad_accum - 1

    def __call__(self, loss: torch.Tensor) -> None:
        self.scaler.scale(loss / self.grad_accum if self.grad_accum > 1 else loss).backward()
        loss_bad = (~torch.isfinite(loss.detach())).float()
        self.micro_batch += 1
        self.stepped = self.micro_batch == self.grad_accum
        if not self.stepped:
            self.bad_micro_batch = torch.maximum(self.bad_micro_batch, loss_bad)
            self._arrange_sync()
            return
        if self.grad_accum > 1:
            loss_bad = torch.maximum(self.bad_micro_batch, loss_bad)
            self.bad_micro_batch = torch.zeros_like(loss_bad)
        self.micro_batch = 0
        self._arrange_sync()
        if self.scaler.is_enabled():
            self.scaler.unscale_(self.optimizer)
        max_norm = self.grad_clip if self.grad_clip > 0 else float("inf")
        self.grad_norm = torch.nn.utils.clip_grad_norm_(self.params, max_norm, foreach=True)
        if self.scaler.is_enabled():
            # GradScaler skips steps whose gradients overflowed (normal while the scale settles).
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            grad_bad = (~torch.isfinite(self.grad_norm)).float()
            self.optimizer.found_inf = torch.maximum(loss_bad, grad_bad)
            self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        if self.ema is not None:
            self.ema.update()
        self.bad_streak = (self.bad_streak + loss_bad) * loss_bad
        self.worst_streak = torch.maximum(self.worst_streak, self.bad_streak)

    def check(self) -> None:
        """Read the guard (one sync); call at logging intervals."""
        if int(self.worst_streak.item()) >= self.max_bad_steps:
            raise NonFiniteLossError(
                f"the loss was NaN/inf for {self.max_bad_steps} steps in a row; lower --lr, use "
                "--amp bf16 or none instead of fp16, or check the data for corrupt images")
        self.worst_streak.zero_()


    def state_dict(self) -> dict:
        """Optimizer, scheduler and (fp16) scaler state: what a second network's step needs saved."""
        return {"optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
                "scaler": self.scaler.state_dict() if self.scaler.is_enabled() else None}

    def load_state_dict(self, state: dict) -> None:
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        if state.get("scaler") is not None and self.scaler.is_enabled():
            self.scaler.load_state_dict(state["scaler"])


def make_train_step(model: torch.nn.Module, args, device: torch.device, *, lr: float = None,
                    total_steps: int = None, weight_decay: float = None, betas=(0.9, 0.999),
                    warmup: int = None, grad_clip: float = None, ema: bool = True,
                    min_lr_ratio: float = 0.01, scheduler=None, extra_groups=()) -> TrainStep:
    """The shared optimisation recipe from the shared flags: fused AdamW (--lr, --weight-decay),
    linear warm-up (--warmup) then cosine decay over --steps, loss scaling for --amp fp16 only,
    gradient clipping (--grad-clip) and EMA weights (--ema DECAY, 0: off). A script that adds
    :func:`utils.cli.add_schedule_args` may choose Adam (--optimizer) and a multi-step decay
    (--schedule multistep, --milestones as fractions of the steps, --lr-gamma). Keyword arguments
    override a flag for a second network or a second training phase; ``scheduler(optimizer)``
    replaces the flag-chosen schedule (e.g. :func:`cosine_restarts`); ``extra_groups`` see
    :func:`build_optimizer`. --grad-accum micro-batches make one step; pass the DDP-wrapped model
    (optionally compiled) to skip the all-reduce of the first N-1 (``args`` built by hand without
    ``grad_accum`` mean 1)."""
    optimizer = build_optimizer(model, args.lr if lr is None else lr,
                                args.weight_decay if weight_decay is None else weight_decay, betas=betas,
                                kind=getattr(args, "optimizer", "adamw"), extra_groups=extra_groups)
    total_steps = args.steps if total_steps is None else total_steps
    warmup = args.warmup if warmup is None else warmup
    schedule = getattr(args, "schedule", "cosine")
    if scheduler is not None:
        scheduler = scheduler(optimizer)
    elif schedule == "multistep":
        scheduler = multistep_with_warmup(optimizer, warmup, [round(f * total_steps) for f in args.milestones],
                                          args.lr_gamma)
    elif schedule == "cosine":
        scheduler = cosine_with_warmup(optimizer, warmup, total_steps, min_lr_ratio)
    else:
        raise ValueError(f"--schedule must be one of {', '.join(SCHEDULES)}, got {schedule!r}")
    return TrainStep(optimizer, scheduler, make_grad_scaler(args.amp, device),
                     args.grad_clip if grad_clip is None else grad_clip,
                     ema=EMA(model, args.ema) if ema and args.ema > 0 else None,
                     grad_accum=getattr(args, "grad_accum", 1), ddp=find_ddp(model))


def find_ddp(model: torch.nn.Module):
    """The DistributedDataParallel wrapper among ``model``'s wrappers (torch.compile, DDP), else None."""
    while model is not None:
        if isinstance(model, torch.nn.parallel.DistributedDataParallel):
            return model
        model = getattr(model, "_orig_mod", None)
    return None


class LossTracker:
    """Sums logged loss terms on the device; :meth:`means` syncs once per logging interval."""

    def __init__(self):
        self.sums, self.count = {}, 0

    def update(self, values: dict) -> None:
        for name, value in values.items():
            value = value.detach().float()
            self.sums[name] = self.sums[name] + value if name in self.sums else value
        self.count += 1

    def means(self) -> dict:
        if not self.count:
            return {}
        names = list(self.sums)
        totals = torch.stack([self.sums[n] for n in names]).tolist()
        means = {name: total / self.count for name, total in zip(names, totals)}
        self.sums, self.count = {}, 0
        return means


# --------------------------------------------------------------------------- save / resume

def _stateful(obj):
    """The object whose state_dict is saved: a model's plain module (no compile/DDP wrapper), else obj."""
    return unwrap_model(obj) if isinstance(obj, torch.nn.Module) else obj


class TrainingState:
    """Everything that makes a run resumable, saved and restored together.

    ``config`` is the resolved configuration (must contain ``'model'``, a
    :func:`utils.checkpoint.model_spec`); a checkpoint whose model spec differs is refused on resume.
    ``extra_modules`` maps names to further stateful objects of the run (anything with
    ``state_dict()`` / ``load_state_dict()``: a GAN discriminator and its :class:`TrainStep`); they are saved under ``extra['modules']`` of the one checkpoint format and restored by
    :meth:`resume`.
    """

    def __init__(self, *, model, train_step: TrainStep, config: dict, extra_modules: dict = None):
        self.model, self.train_step, self.config = model, train_step, config
        self.optimizer, self.scheduler = train_step.optimizer, train_step.scheduler
        self.scaler, self.ema = train_step.scaler, train_step.ema
        self.extra_modules = dict(extra_modules or {})

    @property
    def eval_model(self) -> torch.nn.Module:
        """The weights to validate and ship: the EMA copy when EMA is on."""
        return self.ema.module if self.ema is not None else self.model

    def save(self, path, step: int, extra: dict = None) -> None:
        extra = dict(extra or {})
        if self.extra_modules:
            extra["modules"] = {name: _stateful(obj).state_dict() for name, obj in self.extra_modules.items()}
        save_checkpoint(path, step=step, model=self.model, config=self.config, optimizer=self.optimizer,
                        scheduler=self.scheduler, scaler=self.scaler, ema=self.ema, extra=extra)

    def resume(self, path):
        """Restore the state saved at ``path`` (a file, or a run folder meaning its last.pt).

        Returns ``(step, extra)``; raises :class:`CheckpointError` for a missing, corrupt or
        incompatible checkpoint.
        """
        checkpoint = load_checkpoint(path)
        if not isinstance(checkpoint, dict) or "optimizer" not in checkpoint or "step" not in checkpoint:
            raise CheckpointError(f"{path} is not a training checkpoint of this codebase "
                                  "(to start from published weights use --pretrained)")
        saved_model = checkpoint["config"].get("model")
        if saved_model != self.config.get("model"):
            raise CheckpointError(f"{path} was trained with model {saved_model}, but this run builds "
                                  f"{self.config.get('model')}; pass the same model flags to resume")
        extra = dict(checkpoint.get("extra", {}))
        saved_modules = extra.pop("modules", {})
        missing = [name for name in self.extra_modules if name not in saved_modules]
        if missing:
            raise CheckpointError(f"{path} holds no state for {', '.join(missing)}: it was written by a "
                                  "different training script")
        try:
            unwrap_model(self.model).load_state_dict(checkpoint["model"])
            self.optimizer.load_state_dict(checkpoint["optimizer"])
            self.scheduler.load_state_dict(checkpoint["scheduler"])
            if self.ema is not None and checkpoint.get("ema") is not None:
                self.ema.load_state_dict(checkpoint["ema"], num_updates=checkpoint["step"])
            if checkpoint.get("scaler") is not None and self.scaler.is_enabled():
                self.scaler.load_state_dict(checkpoint["scaler"])
            for name, obj in self.extra_modules.items():
                if saved_modules[name]:  # empty: a disabled GradScaler, nothing to restore
                    _stateful(obj).load_state_dict(saved_modules[name])
        except (RuntimeError, ValueError, KeyError) as error:
            raise CheckpointError(f"cannot resume from {path}: {error}") from error
        set_rng_state(checkpoint["rng"])
        return checkpoint["step"], extra
