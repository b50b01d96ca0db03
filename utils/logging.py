"""Run-folder outputs: metrics.jsonl (+ TensorBoard when installed), config.json, sample grids."""
import json
import time
from pathlib import Path

import cv2
import numpy as np
import torch


def write_config(run_dir, config: dict) -> None:
    """The resolved configuration of a run, as JSON (the same dict goes into every checkpoint)."""
    path = Path(run_dir) / "config.json"
    path.write_text(json.dumps(config, indent=2, sort_keys=True, default=str) + "\n")


class MetricsLogger:
    """Appends ``{"step", "split", "time", **values}`` lines to ``RUN/metrics.jsonl``; mirrors them to
    TensorBoard (``RUN/tb``) when the tensorboard package is installed."""

    def __init__(self, run_dir):
        self.path = Path(run_dir) / "metrics.jsonl"
        self.start = time.time()
        try:
            from torch.utils.tensorboard import SummaryWriter
            self.writer = SummaryWriter(str(Path(run_dir) / "tb"))
        except ImportError:
            self.writer = None

    def log(self, step: int, split: str, values: dict) -> None:
        record = {"step": step, "split": split, "time": round(time.time() - self.start, 3), **values}
        with self.path.open("a") as f:
            f.write(json.dumps(record) + "\n")
        if self.writer is not None:
            for name, value in values.items():
                if isinstance(value, (int, float)):
                    self.writer.add_scalar(f"{split}/{name}", value, step)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def read_metrics(run_dir) -> list:
    """All records of ``RUN/metrics.jsonl`` (empty if the file does not exist yet)."""
    path = Path(run_dir) / "metrics.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def to_uint8_image(tensor: torch.Tensor) -> np.ndarray:
    """(3, H, W) float [0, 1] -> HxWx3 uint8 RGB."""
    array = tensor.detach().float().clamp(0, 1).permute(1, 2, 0).cpu().numpy()
    return (array * 255.0 + 0.5).astype(np.uint8)


def save_image_grid(path, rows, max_height: int = 256) -> None:
    """Save rows of images (each row a list of (3, H, W) tensors, e.g. input | output | target) as
    one PNG; every image is scaled to at most ``max_height`` pixels high, rows padded to equal width."""
    rendered = []
    for row in rows:
        cells = []
        for image in row:
            array = to_uint8_image(image)
            scale = min(1.0, max_height / array.shape[0])
            if scale < 1.0:
                size = (max(1, round(array.shape[1] * scale)), max(1, round(array.shape[0] * scale)))
                array = cv2.resize(array, size, interpolation=cv2.INTER_AREA)
            cells.append(array)
        height = max(c.shape[0] for c in cells)
        cells = [np.pad(c, ((0, height - c.shape[0]), (0, 4), (0, 0))) for c in cells]
        rendered.append(np.concatenate(cells, axis=1))
    width = max(r.shape[1] for r in rendered)
    grid = np.concatenate([np.pad(r, ((0, 4), (0, width - r.shape[1]), (0, 0))) for r in rendered], axis=0)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), cv2.cvtColor(grid, cv2.COLOR_RGB2BGR))
