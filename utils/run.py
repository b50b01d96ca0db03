"""The run folder of a training script: config.json, metrics.jsonl, samples/, last.pt and best.pt.

``RunFolder`` does the bookkeeping a loop asks for at its intervals (log, validate + grid + best.pt,
save last.pt); the loop itself, its loss and its model calls stay in the script.
"""
import time
from pathlib import Path

import torch
from tqdm import tqdm

from .logging import MetricsLogger, save_image_grid, write_config
from .training import configure_backend, seed_everything
from .validation import validate


def setup(args):
    """Seed everything, configure the backend, create the run folder; returns (device, run_dir)."""
    device = torch.device(args.device)
    seed_everything(args.seed)
    configure_backend(device)
    run_dir = Path(args.out)
    run_dir.mkdir(parents=True, exist_ok=True)
    return device, run_dir


class RunFolder:
    """Logging, validation and checkpoints of one run.

    ``state`` is a :class:`utils.training.TrainingState`; ``best_psnr`` comes back from a resumed
    checkpoint's ``extra`` so best.pt keeps meaning best-so-far across restarts.
    """

    def __init__(self, run_dir, args, state, best_psnr: float = float("-inf")):
        self.dir, self.args, self.state = Path(run_dir), args, state
        self.best_psnr = best_psnr
        self.logger = MetricsLogger(self.dir)
        self.interval_start, self.interval_steps = time.time(), 0
        write_config(self.dir, state.config)

    def extra(self) -> dict:
        return {"best_psnr": self.best_psnr}

    def log_train(self, step: int, tracker, train_step, progress=None) -> dict:
        """Write the interval's mean losses, lr, grad norm and throughput (one sync); check the
        non-finite guard."""
        train_step.check()
        values = tracker.means()
        elapsed = time.time() - self.interval_start
        steps = max(1, step - self.interval_steps)
        values.update(lr=train_step.optimizer.param_groups[0]["lr"],
                      grad_norm=float(train_step.grad_norm),
                      images_per_s=steps * self.args.batch_size / max(elapsed, 1e-9))
        self.logger.log(step, "train", values)
        if progress is not None:
            progress.set_postfix(loss=f"{values.get('loss', 0):.4f}", lr=f"{values['lr']:.2e}",
                                 img_s=f"{values['images_per_s']:.1f}")
        self.interval_start, self.interval_steps = time.time(), step
        return values

    def log_identity(self, val_loader, device) -> dict:
        """Score the as-shot inputs against the targets: the baseline every model must beat."""
        metrics, _ = validate(None, val_loader, device, identity=True, num_samples=0)
        self.logger.log(0, "identity", metrics)
        print(f"identity baseline (input vs target): PSNR {metrics['psnr']:.2f} dB, SSIM {metrics['ssim']:.4f}, "
              f"L1 {metrics['l1']:.4f}")
        return metrics

    def validate(self, step: int, model, val_loader, device, model_inputs=None, progress=None) -> dict:
        """Validate (whole images or --val-tile tiles), save the sample grid, and best.pt on a new best PSNR."""
        kwargs = {"model_inputs": model_inputs} if model_inputs is not None else {}
        start = time.time()
        metrics, samples = validate(model, val_loader, device, self.args.amp, tile=self.args.val_tile,
                                    num_samples=self.args.num_samples, **kwargs)
        self.logger.log(step, "val", metrics)
        if samples:
            save_image_grid(self.dir / "samples" / f"step_{step:07d}.png", samples)
        if metrics["psnr"] > self.best_psnr:
            self.best_psnr = metrics["psnr"]
            self.state.save(self.dir / "best.pt", step, extra={**self.extra(), "val": metrics})
        message = (f"step {step}: val PSNR {metrics['psnr']:.2f} dB, SSIM {metrics['ssim']:.4f}, "
                   f"L1 {metrics['l1']:.4f} (best {self.best_psnr:.2f} dB)")
        (progress.write if progress is not None else print)(message)
        self.interval_start += time.time() - start  # validation time is not training throughput
        return metrics

    def save_last(self, step: int) -> None:
        self.state.save(self.dir / "last.pt", step, extra=self.extra())

    def progress(self, step: int) -> tqdm:
        """The progress bar (steps, ETA; loss, lr and throughput at each log interval)."""
        self.bar = tqdm(total=self.args.steps, initial=step, desc=self.args.script, dynamic_ncols=True)
        return self.bar

    def end_step(self, step: int, tracker, train_step, eval_model, val_loader, device, model_inputs=None) -> None:
        """After optimizer step ``step``: log, validate (+ best.pt) and save last.pt at their intervals
        (``--log-every``, ``--val-every``, ``--save-every``, and always at the final step)."""
        self.bar.update()
        final = step == self.args.steps
        if step % self.args.log_every == 0 or final:
            self.log_train(step, tracker, train_step, self.bar)
        if step % self.args.val_every == 0 or final:
            self.validate(step, eval_model, val_loader, device, model_inputs=model_inputs, progress=self.bar)
        if step % self.args.save_every == 0 or final:
            self.save_last(step)

    def interrupted(self, step: int) -> None:
        """Ctrl-C: leave a resumable last.pt and exit with status 130."""
        self.save_last(step)
        self.bar.write(f"interrupted at step {step}: saved {self.dir / 'last.pt'}; "
                       f"continue with --resume {self.dir}")
        raise SystemExit(130)

    def close(self) -> None:
        if getattr(self, "bar", None) is not None:
            self.bar.close()
        self.logger.close()
