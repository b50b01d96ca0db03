"""The run folder of a training script and the bookkeeping around its loop.

    device, run_dir = setup(args)
    ...
    run = Run(args, state, device)                      # resumes from --resume, writes config.json
    batches = run.train_batches(train_set)              # --batch-size/--grad-accum/--progressive, resumed
    with run.training(val_loader(val_set)):             # identity baseline, progress bar, Ctrl-C
        while run.step < args.steps:
            ...                                          # one micro-batch: forward, loss, train_step(loss)
            run.end_step(losses)                         # log / validate / save at their intervals

The loop, its loss and its model calls stay in the script; ``Run`` only writes what a run leaves
behind: config.json, metrics.jsonl (+ TensorBoard), samples/step_*.png grids, best.pt and last.pt
(and the --keep-best best_step*.pt), and at the end says what to run next.

Gradient accumulation keeps the loop's shape: each iteration is one micro-batch, the TrainStep steps
on every --grad-accum-th call, and ``end_step`` counts (logs, validates, saves) optimizer steps only.
"""
import contextlib
import shlex
import time
from pathlib import Path

import torch
from tqdm import tqdm

from data.loaders import PatchSchedule, train_batches

from .checkpoint import load_pretrained
from .logging import MetricsLogger, save_image_grid, write_config
from .training import LossTracker, configure_backend, seed_everything
from .validation import validate


def setup(args):
    """Seed everything, configure the backend (cuDNN autotune, TF32 on CUDA), create the run folder;
    returns (device, run_dir)."""
    device = torch.device(args.device)
    seed_everything(args.seed)
    configure_backend(device)
    run_dir = Path(args.out)
    run_dir.mkdir(parents=True, exist_ok=True)
    return device, run_dir


def prepare_model(model: torch.nn.Module, args, device: torch.device, name: str,
                  load_weights=load_pretrained) -> torch.nn.Module:
    """Move ``model`` to the device, load --pretrained weights with ``load_weights(model, path)``
    (default: strict :func:`utils.checkpoint.load_pretrained`), print its size; returns the module to
    train with (``torch.compile``-d under --compile; checkpoints keep the plain one)."""
    model.to(device)
    if args.pretrained:
        load_weights(model, args.pretrained)
    print(f"model: {name}, {sum(p.numel() for p in model.parameters()):,} parameters")
    return torch.compile(model) if args.compile else model


def _quoted(path) -> str:
    return shlex.quote(str(path))


class Run:
    """One training run: resume, logging, validation and checkpoints.

    ``state`` is a :class:`utils.training.TrainingState`. ``run_dir`` / ``resume`` / ``name``
    default to --out / --resume / the script's name (cross-validation folds and training phases pass
    their own; ``resume=False`` starts fresh whatever --resume says); a fresh run starts counting at
    ``start_step`` (a second training phase). ``model_inputs(batch)`` builds the network input of a
    validation batch (scripts with extra input channels); ``eval_model`` replaces the network that
    validation runs (a diffusion pipeline around the trained ControlNet); ``sample_views(model, inputs)``
    adds maps to the sample grid rows (see :func:`utils.validation.validate`); ``extra`` is saved in every checkpoint
    (``resumed_extra`` is what the resumed checkpoint held), next to the best PSNR so far.
    ``summary=False`` leaves out the closing "what next" lines (a phase that is not the run's last).
    """

    def __init__(self, args, state, device, run_dir=None, resume=None, name=None, model_inputs=None,
                 start_step: int = 0, eval_model=None, sample_views=None, summary: bool = True):
        self.args, self.state, self.device = args, state, device
        self.dir = Path(run_dir if run_dir is not None else args.out)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.name = name or args.script
        self.model_inputs, self.eval_model, self.sample_views = model_inputs, eval_model, sample_views
        resume = args.resume if resume is None else resume
        self.step, self.resumed_extra = state.resume(resume) if resume else (start_step, {})
        self.fresh = not resume
        self.first_step, self.show_summary = start_step, summary
        self.best_psnr = self.resumed_extra.get("best_psnr", float("-inf"))
        self.best_step = self.resumed_extra.get("best_step")
        # [psnr, step] of the --keep-best checkpoints on disk, best first
        self.top_checkpoints = [list(entry) for entry in self.resumed_extra.get("top_checkpoints", [])]
        self.identity_psnr, self.schedule, self.stage = None, None, None
        self.interval_images = 0
        self.extra = {}
        self.tracker = LossTracker()
        self.open_outputs()

    # A data-parallel run's processes (utils.distributed.DistributedRun) share out the data by these.
    rank, world_size = 0, 1

    def open_outputs(self) -> None:
        """Start metrics.jsonl (+ TensorBoard) and write config.json."""
        self.logger = MetricsLogger(self.dir)
        write_config(self.dir, self.state.config)

    def train_batches(self, dataset, seed: int = None, workers: int = None, progressive: bool = True,
                      stream=None):
        """The training micro-batches of the shared flags (--batch-size, --grad-accum, --progressive,
        --seed, --workers; pinned memory on CUDA) from this run's step on: see
        :func:`data.loaders.train_batches`. --progressive stages count from the run's first step and
        'official' scales to its length (each phase of a two-phase script gets the whole schedule);
        ``progressive=False``: a script whose samples have a fixed size refuses the flag; ``stream``:
        the draws' source (default uniform epochs; e.g. :class:`data.curriculum.CurriculumStream`)."""
        args = self.args
        if args.progressive and not progressive:
            raise ValueError(f"--progressive: {args.script} trains on fixed-size samples (diffusion latents); "
                             "use --crop and --batch-size")
        self.schedule = (PatchSchedule.parse(args.progressive, args.steps - self.first_step)
                         if args.progressive else PatchSchedule.constant(args.batch_size))
        return train_batches(dataset, args.batch_size, args.seed if seed is None else seed,
                             start_step=self.step - self.first_step,
                             workers=args.workers if workers is None else workers,
                             pin_memory=self.device.type == "cuda", grad_accum=args.grad_accum,
                             schedule=self.schedule, stream=stream, rank=self.rank,
                             world_size=self.world_size)

    @contextlib.contextmanager
    def training(self, val_loader):
        """Around the loop: scores the identity baseline on a fresh run, shows the progress bar
        (loss, lr, images/s, ETA), and on Ctrl-C leaves a resumable last.pt and exits with 130."""
        self.val_loader = val_loader
        if self.fresh:
            self.log_identity()
        self.bar = self.progress_bar()
        self.interval_start, self.interval_images = time.time(), 0
        self.note_patch_stage()
        self.state.model.train()
        try:
            yield self
            if self.show_summary:
                self.bar.close()
                self.print_summary()
        except KeyboardInterrupt:
            self.save_last()
            self.bar.write(f"interrupted at step {self.step}: saved {self.dir / 'last.pt'}; "
                           f"continue with --resume {self.dir}")
            raise SystemExit(130)
        finally:
            self.bar.close()
            self.logger.close()

    def progress_bar(self, disable: bool = False) -> tqdm:
        return tqdm(total=self.args.steps, initial=self.step, desc=self.name, dynamic_ncols=True, disable=disable)

    def end_step(self, losses: dict) -> None:
        """After each micro-batch: track its losses; once the TrainStep has stepped (every
        --grad-accum-th micro-batch), count the optimizer step and log (--log-every), validate +
        best.pt (--val-every) and save last.pt (--save-every) at their intervals and always at the
        final step."""
        self.tracker.update(losses)
        if not self.state.train_step.stepped:
            return
        self.interval_images += self.images_per_step(self.step)
        self.step += 1
        self.bar.update()
        self.note_patch_stage()
        final = self.step == self.args.steps
        if self.step % self.args.log_every == 0 or final:
            self.log_train()
        if self.step % self.args.val_every == 0 or final:
            self.validate()
        if self.step % self.args.save_every == 0 or final:
            self.save_last()

    def log_train(self) -> dict:
        """The interval's mean losses, lr, grad norm and throughput (one host sync), and the
        non-finite guard's check."""
        train_step = self.state.train_step
        train_step.check()
        values = self.tracker.means()
        elapsed = max(time.time() - self.interval_start, 1e-9)
        values.update(lr=train_step.optimizer.param_groups[0]["lr"], grad_norm=float(train_step.grad_norm),
                      images_per_s=self.interval_images / elapsed)
        self.logger.log(self.step, "train", values)
        self.bar.set_postfix(loss=f"{values.get('loss', 0):.4f}", lr=f"{values['lr']:.2e}",
                             img_s=f"{values['images_per_s']:.1f}")
        self.interval_start, self.interval_images = time.time(), 0
        return values

    def images_per_step(self, step: int) -> int:
        batch = self.schedule.at(step - self.first_step)[1] if self.schedule else self.args.batch_size
        return batch * self.args.grad_accum * self.world_size

    def note_patch_stage(self) -> None:
        """Say (and log) which --progressive stage the next step trains in, when it changes."""
        if self.schedule is None or len(self.schedule.stages) < 2:
            return
        stage = self.schedule.stage_index(self.step - self.first_step)
        if stage != self.stage and self.step < self.args.steps:
            self.stage = stage
            _, crop, batch = self.schedule.stages[stage]
            self.bar.write(f"step {self.step}: {self.schedule.describe(stage)}")
            self.logger.log(self.step, "progressive", {"stage": stage + 1, "crop": crop, "batch_size": batch})

    def log_identity(self) -> dict:
        """Score the as-shot inputs against the targets: the baseline every model must beat."""
        metrics, _ = validate(None, self.val_loader, self.device, identity=True, num_samples=0)
        self.logger.log(self.step, "identity", metrics)
        self.identity_psnr = metrics["psnr"]
        print(f"identity baseline (input vs target): PSNR {metrics['psnr']:.2f} dB, "
              f"SSIM {metrics['ssim']:.4f}, L1 {metrics['l1']:.4f}")
        return metrics

    def validate(self) -> dict:
        """Validate the EMA (else live) weights on whole images (or --val-tile tiles), save the sample
        grid, and best.pt on a new best PSNR."""
        start = time.time()
        kwargs = {"model_inputs": self.model_inputs} if self.model_inputs is not None else {}
        if self.sample_views is not None:
            kwargs["sample_views"] = self.sample_views
        eval_model = self.eval_model if self.eval_model is not None else self.state.eval_model
        metrics, samples = validate(eval_model, self.val_loader, self.device, self.args.amp,
                                    tile=self.args.val_tile, num_samples=self.args.num_samples, **kwargs)
        self.state.model.train()
        self.logger.log(self.step, "val", metrics)
        if samples:
            save_image_grid(self.dir / "samples" / f"step_{self.step:07d}.png", samples)
        if metrics["psnr"] > self.best_psnr:
            self.best_psnr, self.best_step = metrics["psnr"], self.step
            self.state.save(self.dir / "best.pt", self.step, extra={**self.checkpoint_extra(), "val": metrics})
        if self.args.keep_best > 1:
            self.keep_top(metrics)
        self.bar.write(f"step {self.step}: val PSNR {metrics['psnr']:.2f} dB, SSIM {metrics['ssim']:.4f}, "
                       f"L1 {metrics['l1']:.4f} (best {self.best_psnr:.2f} dB)")
        self.interval_start += time.time() - start  # validation time is not training throughput
        return metrics

    def top_path(self, step: int) -> Path:
        return self.dir / f"best_step{step:07d}.pt"

    def keep_top(self, metrics: dict) -> None:
        """Keep the --keep-best K best validated checkpoints (by PSNR) as best_stepNNNNNNN.pt; the one
        that drops out of the top K is deleted."""
        entries = sorted(self.top_checkpoints + [[metrics["psnr"], self.step]], key=lambda e: -e[0])
        kept, dropped = entries[:self.args.keep_best], entries[self.args.keep_best:]
        self.top_checkpoints = kept
        if [metrics["psnr"], self.step] in kept:
            self.state.save(self.top_path(self.step), self.step, extra={**self.checkpoint_extra(), "val": metrics})
        for _, step in dropped:
            if step != self.step:
                self.top_path(step).unlink(missing_ok=True)

    def save_last(self) -> None:
        self.state.save(self.dir / "last.pt", self.step, extra=self.checkpoint_extra())

    def checkpoint_extra(self) -> dict:
        """What every checkpoint of this run carries in ``extra``: ``self.extra``, the best PSNR and
        its step, the --keep-best list."""
        return {**self.extra, "best_psnr": self.best_psnr, "best_step": self.best_step,
                "top_checkpoints": self.top_checkpoints}

    def print_summary(self) -> None:
        """The closing lines: the best validation and what to run next, filled in for this run."""
        print(f"done: {self.step} steps, run folder {self.dir}")
        if self.best_step is None:
            return
        best = self.dir / "best.pt"
        baseline = f" (as-shot input: {self.identity_psnr:.2f} dB)" if self.identity_psnr is not None else ""
        pairs = getattr(self.val_loader.dataset, "pairs", None)
        photos = Path(pairs[0].input).parent if pairs else "PHOTOS"
        print(f"best validation PSNR {self.best_psnr:.2f} dB at step {self.best_step}{baseline}: {best}")
        print(f"enhance photos with it: python enhance.py --checkpoint {_quoted(best)} --input {_quoted(photos)} "
              f"--out {_quoted(self.dir / 'enhanced')}")
        print(f"compare it with the other runs: python report.py {_quoted(self.dir.parent)}/* "
              f"--out {_quoted(self.dir.parent / 'report')}")

