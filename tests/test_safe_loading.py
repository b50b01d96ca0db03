"""Loading a weights file never runs code: the restricted unpickler on every entry point, one-line
refusals, every published layout still loading strictly, old checkpoints resuming, the explicit opt-in."""
import argparse
import pathlib
import random
import subprocess
import sys
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest
import torch

import enhance
import evaluate
import train_restormer_512_combined_loss as recipe
import utils.run
from models.darkir import DarkIR
from models.restormer import Restormer
from tests.conftest import write_pairs
from tools.convert_checkpoint import convert
from utils.checkpoint import (TRUST_ENV, CheckpointError, load_checkpoint, load_pretrained, rng_state,
                              set_rng_state, set_trust_checkpoints)
from utils.cli import base_parser, parse_args

ROOT = Path(__file__).resolve().parents[1]
TINY_RESTORMER = dict(dim=8, num_blocks=[1, 1, 1, 1], num_refinement_blocks=1, heads=[1, 1, 1, 1])
TINY_DARKIR = dict(width=8, middle_blk_num_enc=1, middle_blk_num_dec=1, enc_blk_nums=[1, 1, 1], dec_blk_nums=[1, 1, 1])
TINY_FLAGS = ["--crop", "32", "--batch-size", "2", "--dim", "8", "--num-blocks", "1", "1", "1", "1",
              "--num-refinement-blocks", "1", "--heads", "1", "1", "1", "1", "--workers", "0", "--lr", "1e-3",
              "--warmup", "1", "--ema", "0.9"]


def _argv(data, out, steps=4, *extra):
    return TINY_FLAGS + ["--data", str(data), "--out", str(out), "--steps", str(steps), "--val-every", "2",
                         "--save-every", "2", "--log-every", "1", *extra]


def _weights(path):
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    return checkpoint["step"], checkpoint["model"], checkpoint["ema"]


class CreatesMarker:
    """Unpickling this calls ``Path.touch(marker)``: the stand-in for ``os.system(...)``."""

    def __init__(self, marker):
        self.marker = pathlib.Path(marker)

    def __reduce__(self):
        return pathlib.Path.touch, (self.marker,)


@pytest.fixture(autouse=True)
def untrusted():
    """Every test starts and ends without the opt-in (--trust-checkpoint is process state)."""
    set_trust_checkpoints(False)
    yield
    set_trust_checkpoints(False)


@pytest.fixture
def code_running_file(tmp_path, monkeypatch):
    """(path, marker): a .pth that creates ``marker`` when unpickled in full, as the issue built it."""
    monkeypatch.delenv(TRUST_ENV, raising=False)
    marker = tmp_path / "MARKER"
    path = tmp_path / "downloaded.pth"
    torch.save({"params": CreatesMarker(marker)}, path)
    return path, marker


def _assert_refused(error, path):
    message = str(error)
    assert "\n" not in message
    assert str(path) in message and "getattr" in message and "--trust-checkpoint" in message


def test_the_crafted_file_does_run_code_when_trusted(code_running_file):
    path, marker = code_running_file  # proves the file is a real attack, so the tests below can fail
    load_checkpoint(path, trust=True)
    assert marker.exists()


@pytest.mark.parametrize("zip_format", [True, False])
def test_refusal_names_the_file_and_type_in_both_file_formats(tmp_path, zip_format):
    marker, path = tmp_path / "MARKER", tmp_path / "downloaded.pth"
    torch.save({"params": CreatesMarker(marker)}, path, _use_new_zipfile_serialization=zip_format)
    with pytest.raises(CheckpointError) as refused:
        load_pretrained(_restormer(0), path)
    _assert_refused(refused.value, path)
    assert not marker.exists()
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="cannot read checkpoint .*corrupt.pt"):
        load_checkpoint(corrupt, trust=True)


def test_pretrained_refuses_the_code_running_file(code_running_file, tiny_pairs, tmp_path):
    path, marker = code_running_file
    with pytest.raises(CheckpointError) as refused:
        recipe.main(_argv(tiny_pairs, tmp_path / "run", 1, "--pretrained", str(path)))
    _assert_refused(refused.value, path)
    assert not marker.exists()


def test_resume_refuses_the_code_running_file(code_running_file, tiny_pairs, tmp_path):
    path, marker = code_running_file
    with pytest.raises(CheckpointError) as refused:
        recipe.main(_argv(tiny_pairs, tmp_path / "run", 1, "--resume", str(path)))
    _assert_refused(refused.value, path)
    assert not marker.exists()


def test_enhance_and_evaluate_refuse_the_code_running_file(code_running_file, tiny_pairs, tmp_path):
    path, marker = code_running_file
    photo = next((tiny_pairs / "val" / "input").iterdir())
    with pytest.raises(CheckpointError) as refused:
        enhance.main(["--checkpoint", str(path), "--input", str(photo), "--out", str(tmp_path / "out")])
    _assert_refused(refused.value, path)
    with pytest.raises(CheckpointError) as refused:
        evaluate.main(["--checkpoint", str(path), "--data", str(tiny_pairs), "--pred", str(tmp_path / "pred")])
    _assert_refused(refused.value, path)
    assert not marker.exists()


def test_command_line_refusal_is_one_line_on_stderr(code_running_file, tmp_path):
    path, marker = code_running_file
    write_pairs(tmp_path / "photos", 1)
    done = subprocess.run([sys.executable, "enhance.py", "--checkpoint", str(path), "--input", str(tmp_path / "photos"),
                           "--out", str(tmp_path / "out")], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: refused to load") and str(path) in lines[0]
    assert not marker.exists()


def _restormer(seed):
    torch.manual_seed(seed)
    return Restormer(**TINY_RESTORMER)


def _published_layouts(state_dict, other):
    prefixed = lambda prefix: OrderedDict((prefix + k, v) for k, v in state_dict.items())  # noqa: E731
    return {
        "params": {"params": state_dict},
        "params_ema": {"params": other, "params_ema": state_dict},
        "bare": state_dict,
        "state_dict": {"state_dict": state_dict, "epoch": 3},
        "model": {"model": state_dict},
        "module_prefix": {"params": prefixed("module.")},
        "compile_prefix": prefixed("_orig_mod."),
        "numpy_extras": {"params": state_dict, "stats": np.arange(3.0), "best": np.float64(1.5)},
    }


@pytest.mark.parametrize("layout", ["params", "params_ema", "bare", "state_dict", "model", "module_prefix",
                                    "compile_prefix", "numpy_extras"])
@pytest.mark.parametrize("legacy_serialization", [False, True])
def test_published_layouts_load_strictly_without_trust(tmp_path, layout, legacy_serialization):
    source, other = _restormer(0), _restormer(1)
    content = _published_layouts(source.state_dict(), other.state_dict())[layout]
    path = tmp_path / "published.pth"
    torch.save(content, path, _use_new_zipfile_serialization=not legacy_serialization)
    target = _restormer(2)
    load_pretrained(target, path, strict=True)
    for name, tensor in source.state_dict().items():
        assert torch.equal(target.state_dict()[name], tensor), name


def test_darkir_file_and_safetensors_load_strictly(tmp_path):
    from safetensors.torch import save_file
    torch.manual_seed(0)
    source = DarkIR(**TINY_DARKIR)
    # the official DarkIR_384.pt: {'params': ...} saved from DataParallel (module. prefix)
    torch.save({"params": {"module." + k: v for k, v in source.state_dict().items()}}, tmp_path / "DarkIR.pt")
    save_file(source.state_dict(), str(tmp_path / "DarkIR.safetensors"))
    for name in ("DarkIR.pt", "DarkIR.safetensors"):
        torch.manual_seed(1)
        target = DarkIR(**TINY_DARKIR)
        load_pretrained(target, tmp_path / name, strict=True)
        for key, tensor in source.state_dict().items():
            assert torch.equal(target.state_dict()[key], tensor), (name, key)


def test_new_checkpoints_need_no_allow_list(tmp_path):
    from utils.checkpoint import save_checkpoint
    model = _restormer(0)
    optimizer = torch.optim.AdamW(model.parameters())
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    save_checkpoint(tmp_path / "last.pt", step=3, model=model, config={"lr": 1e-3}, optimizer=optimizer,
                    scheduler=scheduler, extra={"best_psnr": 20.5})
    assert torch.serialization.get_unsafe_globals_in_checkpoint(tmp_path / "last.pt") == []
    assert torch.load(tmp_path / "last.pt", weights_only=True)["step"] == 3


def _legacy_rng():
    """The RNG state exactly as save_checkpoint wrote it before this change (numpy's as get_state())."""
    return {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}


def _draws():
    return random.random(), float(np.random.rand()), float(torch.rand(1))


@pytest.mark.parametrize("layout", ["legacy", "current"])
def test_rng_state_round_trips_through_the_restricted_loader(tmp_path, layout):
    random.seed(1), np.random.seed(2), torch.manual_seed(3)
    np.random.randn()  # a cached Gaussian is part of numpy's state
    torch.save({"rng": _legacy_rng() if layout == "legacy" else rng_state()}, tmp_path / "rng.pt")
    expected = _draws()
    random.seed(9), np.random.seed(9), torch.manual_seed(9)
    set_rng_state(load_checkpoint(tmp_path / "rng.pt")["rng"])
    assert _draws() == expected


def test_checkpoint_written_by_the_old_code_resumes_exactly(tiny_pairs, tmp_path, monkeypatch):
    recipe.main(_argv(tiny_pairs, tmp_path / "full", 2))
    full_step, full_model, full_ema = _weights(tmp_path / "full" / "last.pt")

    real_batches = utils.run.train_batches

    def interrupted_after_one(*args, **kwargs):
        yield next(real_batches(*args, **kwargs))
        raise KeyboardInterrupt

    monkeypatch.setattr(utils.run, "train_batches", interrupted_after_one)
    with pytest.raises(SystemExit):
        recipe.main(_argv(tiny_pairs, tmp_path / "split", 2))
    monkeypatch.setattr(utils.run, "train_batches", real_batches)
    last = tmp_path / "split" / "last.pt"
    old = torch.load(last, weights_only=True)
    name, key, *rest = old["rng"]["numpy"]
    old["rng"]["numpy"] = (name, key.numpy().astype(np.uint32), *rest)  # today's layout: an ndarray
    torch.save(old, last)
    assert "numpy.ndarray" in torch.serialization.get_unsafe_globals_in_checkpoint(last)

    recipe.main(_argv(tiny_pairs, tmp_path / "split", 2, "--resume", str(tmp_path / "split")))
    step, model, ema = _weights(last)
    assert step == full_step == 2
    for name in full_model:
        assert torch.equal(model[name], full_model[name]), name
        assert torch.equal(ema[name], full_ema[name]), name


@pytest.fixture
def trusted_legacy_pickle(tmp_path):
    """A published-style file that pickles an object (argparse.Namespace, as many repos save their
    options) next to the weights; and the model whose weights it holds."""
    source = _restormer(0)
    path = tmp_path / "colleague.pth"
    torch.save({"params": source.state_dict(), "opt": argparse.Namespace(lr=1e-3)}, path)
    return path, source


def _assert_same_weights(model, source):
    for name, tensor in source.state_dict().items():
        assert torch.equal(model.state_dict()[name], tensor), name


def test_opt_in_loads_a_trusted_legacy_pickle(trusted_legacy_pickle, monkeypatch):
    path, source = trusted_legacy_pickle
    monkeypatch.delenv(TRUST_ENV, raising=False)
    with pytest.raises(CheckpointError, match="argparse.Namespace"):
        load_pretrained(_restormer(1), path)
    monkeypatch.setenv(TRUST_ENV, "1")
    model = _restormer(1)
    load_pretrained(model, path)
    _assert_same_weights(model, source)


def test_trust_flag_lasts_one_command_line(tmp_path, monkeypatch):
    monkeypatch.delenv(TRUST_ENV, raising=False)
    from utils.checkpoint import checkpoints_trusted
    parse_args(base_parser("test"), ["--data", str(tmp_path), "--trust-checkpoint"], script="test")
    assert checkpoints_trusted()
    parse_args(base_parser("test"), ["--data", str(tmp_path)], script="test")
    assert not checkpoints_trusted()


def test_trust_flag_on_a_training_script(trusted_legacy_pickle, tiny_pairs, tmp_path, monkeypatch):
    path, _ = trusted_legacy_pickle
    monkeypatch.delenv(TRUST_ENV, raising=False)
    argv = _argv(tiny_pairs, tmp_path / "run", 1, "--pretrained", str(path))
    with pytest.raises(CheckpointError, match="argparse.Namespace"):
        recipe.main(argv)
    recipe.main(argv + ["--trust-checkpoint"])
    assert (tmp_path / "run" / "last.pt").is_file()


def test_conversion_makes_a_trusted_pickle_load_safely(trusted_legacy_pickle, tmp_path):
    path, source = trusted_legacy_pickle
    convert(path, tmp_path / "weights.safetensors")
    model = _restormer(1)
    load_pretrained(model, tmp_path / "weights.safetensors", strict=True)
    _assert_same_weights(model, source)
    with pytest.raises(CheckpointError, match=r"\['opt'\] is a argparse.Namespace"):
        convert(path, tmp_path / "everything.pt")


def test_conversion_to_pt_keeps_an_old_checkpoint_whole(tmp_path):
    model = _restormer(0)
    old = {"format": "rehdr-checkpoint-v1", "step": 5, "model": model.state_dict(),
           "rng": _legacy_rng(), "extra": {"best_psnr": np.float32(21.0)}}
    torch.save(old, tmp_path / "old.pt")
    convert(tmp_path / "old.pt", tmp_path / "new.pt")
    new = torch.load(tmp_path / "new.pt", weights_only=True)  # no allow-list at all
    assert new["step"] == 5 and new["extra"]["best_psnr"] == 21.0
    assert torch.equal(new["rng"]["numpy"][1], torch.from_numpy(old["rng"]["numpy"][1]))
    _assert_same_weights(_loaded(new), model)


def _loaded(checkpoint):
    model = _restormer(1)
    load_pretrained(model, checkpoint, strict=True)
    return model
