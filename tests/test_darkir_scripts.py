"""The DarkIR recipes' own machinery: k-fold splits, the shared DarkIR flags, the side-output loss, the
cross-validation script (fold runs, summary, ensemble, resume) and the two-phase FiveK transfer script."""
import argparse
import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from data.folds import build_fold_datasets, kfold_split
from data.pairs import ImagePair
from losses.side_output import SideOutputLoss
from models.darkir import DarkIR
import utils.run
from tests.conftest import write_pairs
from utils.checkpoint import load_checkpoint
from utils.cli import add_darkir_args, darkir_kwargs
from utils.folds import summarize_folds
from utils.inference import load_enhancer

ROOT = Path(__file__).resolve().parents[1]
TINY_DARKIR = ["--crop", "32", "--batch-size", "2", "--width", "8", "--enc-blocks", "1", "1", "1",
               "--dec-blocks", "1", "1", "1", "--middle-blocks-enc", "1", "--middle-blocks-dec", "1",
               "--workers", "0"]


def load_script(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def fake_pairs(count: int) -> list:
    return [ImagePair(input=Path(f"in/{i:03d}.png"), target=Path(f"gt/{i:03d}.png"), name=f"{i:03d}")
            for i in range(count)]


def read_records(run_dir: Path) -> list:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


# --------------------------------------------------------------------------- folds

@pytest.mark.parametrize("count, num_folds", [(10, 3), (6, 2), (7, 7)])
def test_folds_are_disjoint_complete_and_balanced(count, num_folds):
    pairs = fake_pairs(count)
    splits = kfold_split(pairs, num_folds, seed=0)
    assert len(splits) == num_folds
    val_names = [[pair.name for pair in val] for _, val in splits]
    flat = [name for names in val_names for name in names]
    assert sorted(flat) == sorted(pair.name for pair in pairs)  # every pair validated exactly once
    assert len(set(flat)) == len(flat)
    sizes = [len(names) for names in val_names]
    assert max(sizes) - min(sizes) <= 1
    for train, val in splits:
        assert {p.name for p in train} == {p.name for p in pairs} - {p.name for p in val}
        assert [p.name for p in train] == sorted(p.name for p in train)


def test_folds_are_deterministic_and_depend_on_seed_only():
    pairs = fake_pairs(12)
    first = kfold_split(pairs, 3, seed=5)
    shuffled = [pairs[i] for i in np.random.default_rng(1).permutation(len(pairs))]
    assert kfold_split(shuffled, 3, seed=5) == first  # listing order does not matter
    other_seed = kfold_split(pairs, 3, seed=6)
    assert [v for _, v in other_seed] != [v for _, v in first]


def test_fold_count_errors():
    with pytest.raises(ValueError, match="--folds must be at least 2"):
        kfold_split(fake_pairs(5), 1, seed=0)
    with pytest.raises(ValueError, match="--folds 4 needs at least 4 training pairs, got 3"):
        kfold_split(fake_pairs(3), 4, seed=0)


def test_fold_datasets_keep_the_validation_split_out(tiny_pairs):
    args = argparse.Namespace(data=str(tiny_pairs), val_data=None, val_fraction=0.1, seed=0, crop=32,
                              val_crop=0, cache=False)
    folds, holdout = build_fold_datasets(args, 3)
    assert [(len(train), len(val)) for train, val in folds] == [(4, 2)] * 3
    held_out = {pair.name for pair in holdout.pairs}
    assert len(held_out) == 2 and all(pair.input.parent.parent.name == "val" for pair in holdout.pairs)
    for train, val in folds:
        assert all(pair.input.parent.parent.name == "train" for pair in train.pairs + val.pairs)


def test_summarize_folds_mean_and_sample_std():
    summary = summarize_folds([{"psnr": 20.0, "ssim": 0.8, "l1": 0.1}, {"psnr": 22.0, "ssim": 0.9, "l1": 0.1},
                               {"psnr": 24.0, "ssim": 1.0, "l1": 0.1}])
    assert summary["mean"] == pytest.approx({"psnr": 22.0, "ssim": 0.9, "l1": 0.1})
    assert summary["std"] == pytest.approx({"psnr": 2.0, "ssim": 0.1, "l1": 0.0})


# --------------------------------------------------------------------------- flags and side loss

def parse_darkir(argv):
    parser = argparse.ArgumentParser()
    add_darkir_args(parser)
    return parser.parse_args(argv)


@pytest.mark.parametrize("argv, expected", [([], 3_321_638), (["--size", "l"], 12_957_254)])
def test_darkir_size_presets_are_the_catalog_models(argv, expected):
    model = DarkIR(**darkir_kwargs(parse_darkir(argv)))
    assert sum(p.numel() for p in model.parameters()) == expected


def test_darkir_width_overrides_size():
    kwargs = darkir_kwargs(parse_darkir(["--size", "l", "--width", "8", "--enc-blocks", "1", "1", "2",
                                         "--dilations", "1", "2"]))
    assert kwargs["width"] == 8 and kwargs["enc_blk_nums"] == [1, 1, 2] and kwargs["dilations"] == [1, 2]


def test_side_output_loss_compares_with_block_means():
    target = torch.zeros(1, 3, 16, 16)
    target[:, :, :8, :8] = 1.0  # top-left 8x8 block white: its 1/8-scale pixel is 1, the others 0
    side = torch.full((1, 3, 2, 2), 0.5, requires_grad=True)
    loss = SideOutputLoss()(side, target)
    assert loss.item() == pytest.approx(0.5)
    loss.backward()
    assert torch.isfinite(side.grad).all() and side.grad.abs().sum() > 0
    exact = torch.tensor([[1.0, 0.0], [0.0, 0.0]]).expand(1, 3, 2, 2)
    assert SideOutputLoss()(exact, target).item() == pytest.approx(0.0)


# --------------------------------------------------------------------------- cross-validation script

def test_cv_writes_fold_runs_summary_and_a_working_ensemble(tiny_pairs, tmp_path):
    cv = load_script("train_darkir_cv")
    out = tmp_path / "cv"
    argv = ["--data", str(tiny_pairs), "--folds", "3", "--steps", "3", "--val-every", "3", "--lr", "1e-3",
            "--warmup", "1", "--perceptual-weight", "0", "--out", str(out), *TINY_DARKIR]
    cv.main(argv)
    folds = [out / f"fold_{k}" for k in (1, 2, 3)]
    for fold in folds:
        assert load_checkpoint(fold / "last.pt")["step"] == 3 and (fold / "best.pt").is_file()
    summary = json.loads((out / "summary.json").read_text())
    assert [entry["fold"] for entry in summary["per_fold"]] == [1, 2, 3]
    for entry, fold in zip(summary["per_fold"], folds):
        assert entry["psnr"] == pytest.approx(load_checkpoint(fold / "best.pt")["extra"]["val"]["psnr"])
        assert entry["val_pairs"] == 2
    psnrs = [entry["psnr"] for entry in summary["per_fold"]]
    assert summary["mean"]["psnr"] == pytest.approx(np.mean(psnrs))
    assert summary["std"]["psnr"] == pytest.approx(np.std(psnrs, ddof=1))
    configs = [load_checkpoint(fold / "best.pt")["config"] for fold in folds]
    assert [c["fold"] for c in configs] == [1, 2, 3] and len({c["fold_seed"] for c in configs}) == 3

    # The CV folder is an ensemble for enhance.py / evaluate.py: the mean of the three fold models.
    enhancer = load_enhancer(out, device="cpu", tile=0)
    assert len(enhancer.members) == 3
    photo = np.random.default_rng(0).random((40, 56, 3), dtype=np.float32)
    single = [member.predict(photo) for member in enhancer.members]
    assert not torch.allclose(single[0], single[1])  # distinct models (seeds and data differ)
    ensemble = enhancer.enhance(photo)
    assert ensemble.shape == (40, 56, 3) and np.isfinite(ensemble).all()
    assert np.allclose(ensemble, torch.stack(single).mean(0)[0].permute(1, 2, 0).numpy(), atol=1e-6)

    # --resume continues unfinished folds only: complete folds are left as they are, a lost fold reruns.
    lines_before = [len(read_records(fold)) for fold in folds[:2]]
    for path in folds[2].iterdir():
        if path.is_file():
            path.unlink()
    cv.main(argv + ["--resume", str(out)])
    assert [len(read_records(fold)) for fold in folds[:2]] == lines_before
    assert load_checkpoint(folds[2] / "last.pt")["step"] == 3
    assert json.loads((out / "summary.json").read_text())["per_fold"][:2] == summary["per_fold"][:2]
    with pytest.raises(ValueError, match="belongs to the split of --folds 3 --seed 0"):
        cv.main(argv + ["--resume", str(out), "--folds", "2"])


def test_cv_resume_needs_the_run_folder(tiny_pairs, tmp_path):
    cv = load_script("train_darkir_cv")
    with pytest.raises(ValueError, match="not a cross-validation run folder"):
        cv.main(["--data", str(tiny_pairs), "--resume", str(tmp_path / "missing"), "--out", str(tmp_path / "o"),
                 "--vgg-weights", "random", *TINY_DARKIR])


# --------------------------------------------------------------------------- FiveK transfer script

@pytest.fixture
def fivek_pairs(tmp_path):
    """FiveK exported with the expert C retouches: input/ + expertC/ (4 pairs)."""
    return write_pairs(tmp_path / "fivek", 4, seed=3, input_dir="input", target_dir="expertC")


def transfer_argv(data, fivek, out, steps=4, pretrain_steps=2):
    return ["--data", str(data), "--pretrain-data", str(fivek), "--steps", str(steps), "--pretrain-steps",
            str(pretrain_steps), "--val-every", "1", "--val-fraction", "0.25", "--finetune-lr", "2e-3",
            "--finetune-warmup", "1", "--log-every", "1", "--out", str(out), *TINY_DARKIR]


def test_transfer_switches_phase_and_resumes_in_phase_2(tiny_pairs, fivek_pairs, tmp_path):
    transfer = load_script("train_darkir_fivek_transfer")
    out = tmp_path / "run"
    transfer.main(transfer_argv(tiny_pairs, fivek_pairs, out))
    records = read_records(out)
    phases = [(r["step"], r["phase"], r["data"]) for r in records if r["split"] == "phase"]
    assert phases == [(0, "pretrain", str(fivek_pairs)), (2, "finetune", str(tiny_pairs))]
    assert [r["step"] for r in records if r["split"] == "train"] == [1, 2, 3, 4]
    pretrain_last = load_checkpoint(out / "pretrain_last.pt")
    assert pretrain_last["step"] == 2 and pretrain_last["config"]["phase"] == "pretrain"
    assert load_checkpoint(out / "pretrain_best.pt")["step"] <= 2
    last = load_checkpoint(out / "last.pt")
    assert last["step"] == 4 and last["config"]["phase"] == "finetune"
    assert load_checkpoint(out / "best.pt")["step"] > 2  # the fine-tuning's best, on the real-estate pairs
    # Phase 2 starts from phase 1's weights with a fresh optimizer at its own learning rate.
    assert last["optimizer"]["param_groups"][0]["initial_lr"] == 2e-3
    assert pretrain_last["optimizer"]["param_groups"][0]["initial_lr"] == 5e-4

    transfer.main(transfer_argv(tiny_pairs, fivek_pairs, out, steps=6) + ["--resume", str(out)])
    records = read_records(out)
    assert [r["phase"] for r in records if r["split"] == "phase"] == ["pretrain", "finetune"]  # no re-run
    assert [r["step"] for r in records if r["split"] == "train"] == [1, 2, 3, 4, 5, 6]
    resumed = load_checkpoint(out / "last.pt")
    assert resumed["step"] == 6 and resumed["config"]["phase"] == "finetune"
    assert load_checkpoint(out / "pretrain_last.pt")["step"] == 2


def test_transfer_resumes_interrupted_pretraining_then_fine_tunes(tiny_pairs, fivek_pairs, tmp_path, monkeypatch):
    transfer = load_script("train_darkir_fivek_transfer")
    real_batches = utils.run.train_batches

    def interrupted_after_one_batch(*args, **kwargs):
        batches = real_batches(*args, **kwargs)
        yield next(batches)
        raise KeyboardInterrupt

    monkeypatch.setattr(utils.run, "train_batches", interrupted_after_one_batch)
    out = tmp_path / "run"
    with pytest.raises(SystemExit):
        transfer.main(transfer_argv(tiny_pairs, fivek_pairs, out, pretrain_steps=3))
    saved = load_checkpoint(out / "last.pt")
    assert saved["step"] == 1 and saved["config"]["phase"] == "pretrain"

    monkeypatch.setattr(utils.run, "train_batches", real_batches)
    transfer.main(transfer_argv(tiny_pairs, fivek_pairs, out, pretrain_steps=3) + ["--resume", str(out)])
    records = read_records(out)
    phases = [(r["step"], r["phase"]) for r in records if r["split"] == "phase"]
    assert phases == [(0, "pretrain"), (3, "finetune")]
    assert load_checkpoint(out / "pretrain_last.pt")["step"] == 3
    assert load_checkpoint(out / "last.pt")["step"] == 4


def test_transfer_flag_errors(tiny_pairs, fivek_pairs, tmp_path):
    transfer = load_script("train_darkir_fivek_transfer")
    with pytest.raises(ValueError, match="--pretrain-steps 4 must be between 1 and --steps - 1"):
        transfer.main(transfer_argv(tiny_pairs, fivek_pairs, tmp_path / "a", steps=4, pretrain_steps=4))
    argv = transfer_argv(tiny_pairs, fivek_pairs, tmp_path / "b")
    without_pretrain = argv[:2] + argv[4:]
    with pytest.raises(ValueError, match="--pretrain-data is required"):
        transfer.main(without_pretrain)
