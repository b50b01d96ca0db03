"""The template recipe end to end: exact resume after Ctrl-C, one-line errors, the non-finite guard."""
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import train_restormer_512_combined_loss as recipe
import utils.run
from utils.checkpoint import CheckpointError
from utils.training import NonFiniteLossError

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--crop", "32", "--batch-size", "2", "--dim", "8", "--num-blocks", "1", "1", "1", "1",
        "--num-refinement-blocks", "1", "--heads", "1", "1", "1", "1", "--workers", "0", "--lr", "1e-3",
        "--warmup", "1", "--ema", "0.9"]


def _argv(data, out, steps=4, *extra):
    return TINY + ["--data", str(data), "--out", str(out), "--steps", str(steps), "--val-every", "2",
                   "--save-every", "2", "--log-every", "1", *extra]


def _weights(path):
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    return checkpoint["step"], checkpoint["model"], checkpoint["ema"], checkpoint["optimizer"]


def test_interrupt_then_resume_reproduces_the_uninterrupted_run(tiny_pairs, tmp_path, monkeypatch):
    recipe.main(_argv(tiny_pairs, tmp_path / "full"))
    full_step, full_model, full_ema, full_optimizer = _weights(tmp_path / "full" / "last.pt")

    real_batches = utils.run.train_batches

    def interrupted_after_two(*args, **kwargs):
        batches = real_batches(*args, **kwargs)
        yield next(batches)
        yield next(batches)
        raise KeyboardInterrupt

    monkeypatch.setattr(utils.run, "train_batches", interrupted_after_two)
    with pytest.raises(SystemExit) as stopped:
        recipe.main(_argv(tiny_pairs, tmp_path / "split"))
    assert stopped.value.code == 130
    assert _weights(tmp_path / "split" / "last.pt")[0] == 2
    monkeypatch.setattr(utils.run, "train_batches", real_batches)
    recipe.main(_argv(tiny_pairs, tmp_path / "split", 4, "--resume", str(tmp_path / "split")))
    step, model, ema, optimizer = _weights(tmp_path / "split" / "last.pt")
    assert step == full_step == 4
    for name in full_model:
        assert torch.equal(model[name], full_model[name]), name
        assert torch.equal(ema[name], full_ema[name]), name
    assert optimizer["state"][0]["step"] == full_optimizer["state"][0]["step"]


def test_resume_errors(tiny_pairs, tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        recipe.main(_argv(tiny_pairs, tmp_path / "a", 2, "--resume", str(tmp_path / "missing")))
    recipe.main(_argv(tiny_pairs, tmp_path / "b", 2))
    wider = _argv(tiny_pairs, tmp_path / "b", 4, "--resume", str(tmp_path / "b"))
    wider[wider.index("--dim") + 1] = "16"
    with pytest.raises(CheckpointError, match="same model flags"):
        recipe.main(wider)


def test_non_finite_loss_stops_with_a_clear_error(tiny_pairs, tmp_path, monkeypatch):
    real_loss = recipe.CombinedLoss

    class ExplodingLoss(real_loss):
        def forward(self, pred, target, inp=None):
            values = super().forward(pred, target, inp)
            values["loss"] = values["loss"] * float("nan")
            return values

    monkeypatch.setattr(recipe, "CombinedLoss", ExplodingLoss)
    with pytest.raises(NonFiniteLossError, match="in a row"):
        recipe.main(_argv(tiny_pairs, tmp_path / "nan", 8))


@pytest.mark.parametrize("case", ["missing", "no_layout", "unmatched"])
def test_bad_data_is_one_line_error(tmp_path, case):
    data = tmp_path / "data"
    if case == "no_layout":
        (data / "photos").mkdir(parents=True)
        (data / "photos" / "a.png").write_bytes(b"x")
    elif case == "unmatched":
        from tests.conftest import write_pairs
        write_pairs(data, 3)
        (data / "target" / "001.png").unlink()
    result = subprocess.run([sys.executable, "train_restormer_512_combined_loss.py", "--data", str(data),
                             "--out", str(tmp_path / "run"), "--device", "cpu"],
                            cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in result.stderr
    expected = {"missing": "does not exist", "no_layout": "accepted layouts", "unmatched": "001"}[case]
    assert expected in lines[0]
