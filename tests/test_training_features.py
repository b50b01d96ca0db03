"""The shared training features: --grad-accum, --progressive, --keep-best, the closing summary, and a
full disk as a one-line error."""
import errno
import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch

import train_restormer_512_combined_loss as recipe
import utils.run
from data.dataset import PairedDataset
from data.io import DiskFullError, write_image
from data.loaders import PatchSchedule, ResumableBatchSampler, train_batches
from data.pairs import discover_pairs
from tests.conftest import LocalConvNet
from utils.checkpoint import atomic_save
from utils.cli import run_cli
from utils.training import make_train_step

TINY = ["--crop", "32", "--dim", "8", "--num-blocks", "1", "1", "1", "1", "--num-refinement-blocks", "1",
        "--heads", "1", "1", "1", "1", "--workers", "0", "--lr", "1e-3", "--warmup", "1", "--ema", "0.9",
        "--log-every", "1"]


def _argv(data, out, steps, *extra):
    return TINY + ["--data", str(data), "--out", str(out), "--steps", str(steps), *extra]


def _model(path):
    return torch.load(path, map_location="cpu", weights_only=True)["model"]


def _take(iterator, count):
    return [next(iterator) for _ in range(count)]


# --------------------------------------------------------------------------- gradient accumulation

def _args(**overrides):
    return SimpleNamespace(**{"lr": 1e-2, "weight_decay": 0.0, "warmup": 1, "steps": 10, "amp": "none",
                              "grad_clip": 0.02, "ema": 0.9, **overrides})


def test_two_accumulated_micro_batches_equal_one_batch_of_twice_the_size():
    torch.manual_seed(0)
    reference = LocalConvNet()
    accumulated = LocalConvNet()
    accumulated.load_state_dict(reference.state_dict())
    inp, target = torch.rand(4, 3, 12, 12), torch.rand(4, 3, 12, 12)
    one_step = make_train_step(reference, _args(), torch.device("cpu"))
    two_micro = make_train_step(accumulated, _args(grad_accum=2), torch.device("cpu"))
    for _ in range(2):  # two optimizer steps: the second starts from accumulated weights and Adam state
        one_step(torch.nn.functional.l1_loss(reference(inp), target))
        two_micro(torch.nn.functional.l1_loss(accumulated(inp[:2]), target[:2]))
        assert not two_micro.stepped and two_micro.ema.num_updates == one_step.ema.num_updates - 1
        two_micro(torch.nn.functional.l1_loss(accumulated(inp[2:]), target[2:]))
        assert two_micro.stepped
    assert two_micro.ema.num_updates == 2 and two_micro.scheduler.last_epoch == 2
    # the clip (0.02) was active, so this also checks the clip sees the whole step's gradient
    assert float(one_step.grad_norm) > 0.02
    torch.testing.assert_close(two_micro.grad_norm, one_step.grad_norm, rtol=1e-5, atol=1e-7)
    for name, value in reference.state_dict().items():
        torch.testing.assert_close(accumulated.state_dict()[name], value, rtol=1e-5, atol=1e-6)
    for name, value in one_step.ema.state_dict().items():
        torch.testing.assert_close(two_micro.ema.state_dict()[name], value, rtol=1e-5, atol=1e-6)


def test_ddp_gradient_sync_is_armed_for_the_last_micro_batch_only():
    """DDP reads require_backward_grad_sync in its forward: the flag must be set before each forward."""
    model = LocalConvNet()

    class FakeDDP(torch.nn.parallel.DistributedDataParallel):
        def __init__(self, module):  # no process group: only the flag matters here
            torch.nn.Module.__init__(self)
            self.module = module
            self.require_backward_grad_sync = True

        def forward(self, x):
            return self.module(x)

    wrapped = FakeDDP(model)
    train_step = make_train_step(torch.compile(wrapped), _args(grad_accum=3), torch.device("cpu"))
    assert train_step.ddp is wrapped
    flags = [wrapped.require_backward_grad_sync]
    for _ in range(6):
        train_step(wrapped(torch.rand(1, 3, 8, 8)).mean())
        flags.append(wrapped.require_backward_grad_sync)
    # before micro-batch 1, 2, 3 (sync), 4, 5, 6 (sync), and after the last
    assert flags == [False, False, True, False, False, True, False]


def test_accumulated_micro_batches_draw_the_samples_of_one_big_batch_and_resume_mid_run():
    big = _take(iter(ResumableBatchSampler(7, PatchSchedule.constant(4), seed=3)), 5)
    micro = _take(iter(ResumableBatchSampler(7, PatchSchedule.constant(2), seed=3, grad_accum=2)), 10)
    assert [micro[2 * k] + micro[2 * k + 1] for k in range(5)] == big
    resumed = _take(iter(ResumableBatchSampler(7, PatchSchedule.constant(2), seed=3, start_step=3,
                                               grad_accum=2)), 4)
    assert resumed == micro[6:10]


def test_recipe_with_grad_accum_equals_the_big_batch_and_logs_optimizer_steps(tiny_pairs, tmp_path):
    # L1 and saturation are means over the pixels of each image, so a mean over micro-batches is the
    # batch mean; the window-aware term normalises by the window area of the whole batch, so it is off
    per_image = ["--window-weight", "0", "--val-every", "2"]
    recipe.main(_argv(tiny_pairs, tmp_path / "big", 2, "--batch-size", "4", *per_image))
    recipe.main(_argv(tiny_pairs, tmp_path / "accum", 2, "--batch-size", "2", "--grad-accum", "2", *per_image))
    big, accumulated = _model(tmp_path / "big" / "last.pt"), _model(tmp_path / "accum" / "last.pt")
    for name, value in big.items():
        torch.testing.assert_close(accumulated[name], value, rtol=1e-4, atol=1e-5)
    records = [json.loads(line) for line in (tmp_path / "accum" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if r["split"] == "train"] == [1, 2]
    assert torch.load(tmp_path / "accum" / "last.pt", weights_only=True)["step"] == 2


# --------------------------------------------------------------------------- progressive patches

def test_official_schedule_scales_restormers_stages_to_the_run():
    schedule = PatchSchedule.parse("official", 300)
    assert schedule.stages == [(0, 128, 8), (92, 160, 5), (156, 192, 4), (204, 256, 2), (240, 320, 1),
                               (276, 384, 1)]
    assert PatchSchedule.parse("official", 300_000).stages[1] == (92_000, 160, 5)
    assert schedule.at(91) == (128, 8) and schedule.at(92) == (160, 5) and schedule.at(299) == (384, 1)
    assert schedule.draws_before(93, grad_accum=2) == 92 * 8 * 2 + 5 * 2


def test_progressive_spec_errors():
    assert PatchSchedule.parse("3:32:4,2:48:2", 10).stages == [(0, 32, 4), (3, 48, 2)]
    with pytest.raises(ValueError, match="STEPS:CROP:BATCH"):
        PatchSchedule.parse("3:32", 10)
    with pytest.raises(ValueError, match="after the run's 4 steps"):
        PatchSchedule.parse("4:32:4,2:48:2", 4)
    with pytest.raises(ValueError, match="positive"):
        PatchSchedule.parse("2:0:4,2:48:2", 10)


def test_progressive_batches_switch_crop_and_size_and_resume_anywhere(tiny_pairs):
    dataset = PairedDataset(discover_pairs(tiny_pairs)["train"], crop=16, augment=True)
    schedule = PatchSchedule.parse("2:24:3,1:40:1", 4)
    batches = _take(train_batches(dataset, 2, seed=5, workers=0, schedule=schedule, grad_accum=2), 8)
    assert [tuple(b["input"].shape) for b in batches] == [(3, 3, 24, 24)] * 4 + [(1, 3, 40, 40)] * 4
    resumed = _take(train_batches(dataset, 2, seed=5, start_step=2, workers=0, schedule=schedule,
                                  grad_accum=2), 4)
    for expected, got in zip(batches[4:], resumed):
        assert torch.equal(expected["input"], got["input"]) and expected["name"] == got["name"]


def test_recipe_progressive_with_grad_accum_resumes_exactly_and_logs_the_switch(tiny_pairs, tmp_path,
                                                                               monkeypatch):
    flags = ["--progressive", "2:32:2,2:40:1", "--grad-accum", "2", "--val-every", "2", "--save-every", "2"]
    recipe.main(_argv(tiny_pairs, tmp_path / "full", 4, *flags))
    records = [json.loads(line) for line in (tmp_path / "full" / "metrics.jsonl").read_text().splitlines()]
    assert [(r["step"], r["crop"], r["batch_size"]) for r in records if r["split"] == "progressive"] == \
        [(0, 32, 2), (2, 40, 1)]

    real_batches = utils.run.train_batches

    def interrupted_in_step_four(*args, **kwargs):  # 3 optimizer steps and one micro-batch of the 4th
        batches = real_batches(*args, **kwargs)
        yield from _take(batches, 7)
        raise KeyboardInterrupt

    monkeypatch.setattr(utils.run, "train_batches", interrupted_in_step_four)
    with pytest.raises(SystemExit):
        recipe.main(_argv(tiny_pairs, tmp_path / "split", 4, *flags))
    assert torch.load(tmp_path / "split" / "last.pt", weights_only=True)["step"] == 3
    monkeypatch.setattr(utils.run, "train_batches", real_batches)
    recipe.main(_argv(tiny_pairs, tmp_path / "split", 4, *flags, "--resume", str(tmp_path / "split")))
    full, split = _model(tmp_path / "full" / "last.pt"), _model(tmp_path / "split" / "last.pt")
    for name, value in full.items():
        assert torch.equal(split[name], value), name


# --------------------------------------------------------------------------- best checkpoints, summary

def test_keep_best_keeps_the_top_k_and_the_run_ends_with_what_to_do_next(tiny_pairs, tmp_path, capsys):
    out = tmp_path / "run"
    recipe.main(_argv(tiny_pairs, out, 4, "--batch-size", "2", "--val-every", "1", "--keep-best", "2"))
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    val = sorted(((r["psnr"], r["step"]) for r in records if r["split"] == "val"), reverse=True)
    assert len(val) == 4
    assert sorted(p.name for p in out.glob("best_step*.pt")) == sorted(f"best_step{s:07d}.pt" for _, s in val[:2])
    best_psnr, best_step = val[0]
    assert torch.load(out / "best.pt", weights_only=True)["step"] == best_step
    lines = capsys.readouterr().out.strip().splitlines()[-4:]
    assert lines[0].startswith("done: 4 steps")
    assert f"{best_psnr:.2f} dB at step {best_step}" in lines[1] and str(out / "best.pt") in lines[1]
    assert f"python enhance.py --checkpoint {out / 'best.pt'} --input {tiny_pairs / 'val' / 'input'}" in lines[2]
    assert f"python report.py {tmp_path}/* --out {tmp_path / 'report'}" in lines[3]


# --------------------------------------------------------------------------- full disk

def _full_disk_torch_save(obj, path):
    with open(path, "wb") as handle:  # what torch.save leaves: a partial temporary file
        handle.write(b"PK partial")
    raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 512 vs 448")


def test_checkpoint_on_a_full_disk_keeps_the_previous_file_and_says_which_folder(tmp_path, monkeypatch):
    path = tmp_path / "run" / "last.pt"
    atomic_save({"step": 1}, path)
    monkeypatch.setattr(torch, "save", _full_disk_torch_save)
    with pytest.raises(DiskFullError, match=f"disk holding {tmp_path / 'run'} is full"):
        atomic_save({"step": 2}, path)
    assert torch.load(path, weights_only=True) == {"step": 1}
    assert [p.name for p in path.parent.iterdir()] == ["last.pt"]


def test_enhanced_photo_on_a_full_disk_leaves_no_partial_file(tmp_path, monkeypatch):
    from PIL import Image

    def full_disk_save(self, path, *args, **kwargs):
        open(path, "wb").write(b"\xff\xd8partial")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(Image.Image, "save", full_disk_save)
    with pytest.raises(DiskFullError, match="is full"):
        write_image(tmp_path / "out.jpg", np.zeros((4, 4, 3), np.float32))
    assert list(tmp_path.iterdir()) == []


def test_full_disk_is_a_one_line_error(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(torch, "save", _full_disk_torch_save)
    with pytest.raises(SystemExit) as stopped:
        run_cli(lambda: atomic_save({}, tmp_path / "best.pt"))
    assert stopped.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "full" in lines[0]


def test_demo_data_on_a_full_disk_is_a_disk_full_error_and_leaves_nothing(tmp_path, monkeypatch):
    import data.demo

    def full_disk_imwrite(*args):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(data.demo.cv2, "imwrite", full_disk_imwrite)
    with pytest.raises(DiskFullError, match=f"disk holding {tmp_path} is full"):
        data.demo.ensure_demo_data(root=tmp_path / "demo", seed=0, num_train=1, num_val=1)
    assert list(tmp_path.iterdir()) == []
