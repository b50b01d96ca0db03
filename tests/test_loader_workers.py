"""Worker processes start after the main process has used OpenCV's thread pool (a validation grid
was saved, a second fold or phase builds new loaders): this once deadlocked inside the workers."""
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

SCRIPT = """
import sys
import cv2, numpy as np
from data.dataset import PairedDataset
from data.loaders import train_batches, val_loader
from data.pairs import resolve_datasets_pairs
cv2.resize(np.random.rand(2000, 3000, 3).astype(np.float32), (1500, 1000))  # warms OpenCV's thread pool
train_pairs, val_pairs = resolve_datasets_pairs(sys.argv[1])
batch = next(train_batches(PairedDataset(train_pairs, crop=32), 2, seed=0, workers=2))
assert batch["input"].shape == (2, 3, 32, 32)
assert len(list(val_loader(PairedDataset(val_pairs), workers=2))) == len(val_pairs)
print("ok")
"""


def test_workers_start_after_opencv_was_used_in_the_main_process(tiny_pairs):
    result = subprocess.run([sys.executable, "-c", SCRIPT, str(tiny_pairs)], cwd=ROOT, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr
