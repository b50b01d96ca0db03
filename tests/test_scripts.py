"""One smoke test over every train_*.py: its docstring's CPU smoke command runs on a tiny folder
dataset, writes the run folder, resumes and continues, and the run enhances a photo through
enhance.py's loader; and a few steps on a fixed batch lower its loss.

The smoke command is read from the script's docstring (the lines after 'CPU smoke test'), so the
command a user copies is the one that is tested. The test adds --data (unless the command names it),
--workers 0, and replaces the /tmp/smoke output folder with a temporary one; a DATA token in the
command stands for the tiny dataset, a BACKBONE token (the refiner recipes' frozen backbone) for a
tiny Restormer run folder (tests/conftest.py's ``tiny_restormer_checkpoint``).
"""
import ast
import importlib.util
import json
import shlex
from pathlib import Path

import numpy as np
import pytest
import torch

import utils.run
from utils.distributed import shutdown
from utils.inference import load_enhancer

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = sorted(ROOT.glob("train_*.py"))


@pytest.fixture(autouse=True)
def no_process_group_left():
    """The DeepSpeed recipes run in a process group even as one process; end it after the test, so the
    next recipe in this process starts without one."""
    yield
    shutdown()


def smoke_command(script: Path) -> list:
    doc = ast.get_docstring(ast.parse(script.read_text()))
    lines = doc.splitlines()
    start = next(i for i, line in enumerate(lines) if "CPU smoke test" in line)
    command = []
    for line in lines[start + 1:]:
        if not line.strip():
            break
        command.append(line.strip().rstrip("\\"))
    tokens = shlex.split(" ".join(command))
    assert tokens[:2] == ["python", script.name], f"{script.name}: smoke command must start with 'python {script.name}'"
    return tokens[2:]


def load_script(script: Path):
    spec = importlib.util.spec_from_file_location(script.stem, script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def materialise(tokens: list, data: Path, out: Path, request=None) -> list:
    argv = []
    for token in tokens:
        if token == "BACKBONE":
            token = str(request.getfixturevalue("tiny_restormer_checkpoint").parent)
        token = token.replace("DATA", str(data))
        if token.startswith("/tmp/smoke"):
            token = str(out) + token[len("/tmp/smoke"):]
        argv.append(token)
    if "--data" not in argv:
        argv += ["--data", str(data)]
    return argv + ["--workers", "0"]


def flag_value(argv: list, flag: str) -> str:
    return argv[argv.index(flag) + 1]


def checkpoint_steps(out: Path) -> list:
    return [torch.load(p, map_location="cpu", weights_only=True)["step"] for p in sorted(out.rglob("last.pt"))]


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.stem)
def test_smoke_run_and_resume(script, tiny_pairs, tmp_path, request):
    out = tmp_path / "run"
    argv = materialise(smoke_command(script), tiny_pairs, out, request)
    module = load_script(script)
    module.main(argv)
    steps = int(flag_value(argv, "--steps"))
    assert checkpoint_steps(out) and set(checkpoint_steps(out)) == {steps}
    assert list(out.rglob("config.json")) and list(out.rglob("metrics.jsonl"))
    assert list(out.rglob("*.png")), "no sample grid written"
    records = [json.loads(line) for path in out.rglob("metrics.jsonl") for line in path.read_text().splitlines()]
    assert any(r["split"] == "val" for r in records) and any(r["split"] == "train" for r in records)
    saved = torch.load(next(out.rglob("last.pt")), map_location="cpu", weights_only=True)
    expected_seed = int(flag_value(argv, "--seed")) if "--seed" in argv else 0
    assert saved["config"]["seed"] == expected_seed and "rng" in saved

    resumed = list(argv)
    resumed[resumed.index("--steps") + 1] = str(steps + 2)
    module.main(resumed + ["--resume", str(out)])
    assert set(checkpoint_steps(out)) == {steps + 2}

    # the run folder (a cross-validation folder: the ensemble of its folds) enhances an odd-sized photo
    photo = np.random.default_rng(0).random((37, 51, 3), dtype=np.float32)
    enhanced = load_enhancer(out, tile=0).enhance(photo)
    assert enhanced.shape == photo.shape and np.isfinite(enhanced).all()
    assert enhanced.min() >= 0 and enhanced.max() <= 1


@pytest.mark.parametrize("script", [s for s in SCRIPTS if "train_batches" in s.read_text()], ids=lambda p: p.stem)
def test_loss_decreases_on_a_fixed_batch(script, tiny_pairs, tmp_path, monkeypatch, request):
    module = load_script(script)
    fixed = {}

    def fixed_batches(dataset, batch_size, seed, start_step=0, **kwargs):
        fixed.setdefault("batch", torch.utils.data.default_collate([dataset[(i, 0)] for i in range(batch_size)]))
        while True:
            yield fixed["batch"]

    monkeypatch.setattr(utils.run, "train_batches", fixed_batches)  # what Run.train_batches calls
    out = tmp_path / "run"
    argv = materialise(smoke_command(script), tiny_pairs, out, request)
    overrides = {"--steps": "12", "--log-every": "1", "--val-every": "100", "--save-every": "100",
                 "--warmup": "1", "--grad-clip": "0", "--lr": "1e-3", "--ema": "0"}
    for flag, value in overrides.items():
        if flag in argv:
            argv[argv.index(flag) + 1] = value
        else:
            argv += [flag, value]
    module.main(argv)
    key = getattr(module, "SMOKE_LOSS_KEY", "loss")
    records = [json.loads(line) for path in out.rglob("metrics.jsonl") for line in path.read_text().splitlines()]
    losses = [r[key] for r in records if r["split"] == "train"]
    assert len(losses) >= 12
    assert sum(losses[-3:]) < sum(losses[:3]), f"{key} did not decrease: {losses}"


LOSS_FLAG_CASES = {
    "combined_loss_defaults": ("train_restormer_512_combined_loss.py", [],
                               {"l1": 1.0, "window": 0.5, "saturation": 0.3}, ("saturation", "form", "chroma")),
    "combined_loss_default_window": ("train_restormer_512_combined_loss.py", [],
                                     {"l1": 1.0, "window": 0.5, "saturation": 0.3}, ("window", "normalization", "image")),
    "combined_loss_catalog_form": ("train_restormer_512_combined_loss.py",
                                   ["--l1-weight", "0.9", "--window-weight", "0.7", "--saturation-weight", "0.2",
                                    "--saturation-form", "catalog"],
                                   {"l1": 0.9, "window": 0.7, "saturation": 0.2}, ("saturation", "form", "catalog")),
    "combined_loss_region_window": ("train_restormer_512_combined_loss.py",
                                    ["--window-weight", "2", "--window-normalization", "region"],
                                    {"l1": 1.0, "window": 2.0, "saturation": 0.3}, ("window", "normalization", "region")),
    "color_perceptual_catalog_form": ("train_restormer_512_color_perceptual.py",
                                      ["--hsv-weight", "0.3", "--saturation-form", "catalog"],
                                      {"l1": 1.0, "ssim": 0.2, "hsv": 0.3, "lab": 0.5},
                                      ("hsv", "saturation_form", "catalog")),
    "hat_catalog_form": ("train_hat.py", ["--hsv-weight", "0.3", "--saturation-form", "catalog"],
                         {"charbonnier": 1.0, "lab": 0.5, "hsv": 0.3, "histogram": 0.2},
                         ("hsv", "saturation_form", "catalog")),
}


@pytest.mark.parametrize("case", list(LOSS_FLAG_CASES))
def test_loss_weight_and_form_flags_reach_the_training_criterion(case, tiny_pairs, tmp_path, monkeypatch):
    script_name, flags, weights, (term, attribute, form) = LOSS_FLAG_CASES[case]
    module = load_script(ROOT / script_name)
    built = []

    class RecordingLoss(module.CombinedLoss):
        calls = 0

        def forward(self, *args):
            RecordingLoss.calls += 1
            return super().forward(*args)

    monkeypatch.setattr(module, "CombinedLoss", lambda terms: built.append(RecordingLoss(terms)) or built[-1])
    argv = materialise(smoke_command(ROOT / script_name), tiny_pairs, tmp_path / "run")
    argv[argv.index("--steps") + 1] = "1"
    if "--perceptual-weight" not in flags and "--vgg-weights" in argv:
        argv += ["--perceptual-weight", "0"]
    module.main(argv + flags)
    [criterion] = built
    assert criterion.weights == pytest.approx(weights)
    assert getattr(criterion.terms[term], attribute) == form
    assert RecordingLoss.calls >= 1, "the training loop never called the criterion built from the flags"
