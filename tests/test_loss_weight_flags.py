"""Every loss-weight flag of every recipe reaches its loss: one test over all train_*.py.

For each script, the flags named ``--*-weight`` are read from its source; the script's CPU smoke
command runs its first training step, once as given and once per flag with that flag changed. The
losses handed to the optimizer steps (recorded, the backward skipped; stopped at ``Run.end_step``)
come from the same seed, weights and batch, so they must change with every flag: a flag the script
parses but never hands to its loss would leave them equal.
"""
import re
from pathlib import Path

import pytest

from tests.conftest import write_pairs
from tests.test_scripts import SCRIPTS, load_script, materialise, smoke_command
from utils.run import Run
from utils.training import TrainStep

WEIGHT_FLAG = re.compile(r"""add_argument\(\s*["'](--[a-z0-9-]+-weight)["']""")
SCRIPTS_WITH_WEIGHTS = [script for script in SCRIPTS if WEIGHT_FLAG.search(script.read_text())]


class FirstStep(Exception):
    """Raised by the patched Run.end_step: the first step's optimizer losses and the parsed flags."""

    def __init__(self, losses: list, flags: dict):
        super().__init__(losses)
        self.losses, self.flags = losses, flags


def first_step(monkeypatch, module, argv):
    stepped = []
    monkeypatch.setattr(TrainStep, "__call__", lambda step, loss: stepped.append(float(loss.detach())))
    if "engine.backward(" in Path(module.__file__).read_text():
        # DeepSpeed recipes hand the loss to the engine: record it there, skip backward and step
        from deepspeed.runtime.engine import DeepSpeedEngine
        monkeypatch.setattr(DeepSpeedEngine, "backward", lambda engine, loss, *a, **k: stepped.append(float(loss.detach())))
        monkeypatch.setattr(DeepSpeedEngine, "step", lambda engine, *a, **k: None)

    def stop(run, losses):
        raise FirstStep(list(stepped), vars(run.args))
    monkeypatch.setattr(Run, "end_step", stop)
    monkeypatch.setattr(Run, "log_identity", lambda run: {})  # the baseline scoring is not needed here
    with pytest.raises(FirstStep) as stopped:
        module.main(argv)
    return stopped.value


@pytest.mark.parametrize("script", SCRIPTS_WITH_WEIGHTS, ids=lambda p: p.stem)
def test_every_loss_weight_flag_changes_the_loss(script, monkeypatch, tmp_path, request):
    # two 32x32 photos (at most the smoke crop: cropped whole, blown-out window included)
    data = tmp_path / "data"
    write_pairs(data / "train", 2, size=(32, 32), seed=0)
    write_pairs(data / "val", 1, size=(32, 32), seed=1)
    flags = WEIGHT_FLAG.findall(script.read_text())
    module = load_script(script)
    argv = materialise(smoke_command(script), data, tmp_path / "run", request)
    baseline = first_step(monkeypatch, module, argv)
    if baseline.flags.get("vgg_weights") is None and "vgg_weights" in baseline.flags:
        argv += ["--vgg-weights", "random"]  # a weight that enables a VGG term needs its weights
    ignored = []
    for flag in flags:
        default = baseline.flags[flag[2:].replace("-", "_")]
        changed = first_step(monkeypatch, module, argv + [flag, str(2 * default + 0.25)])
        if changed.losses == pytest.approx(baseline.losses, rel=1e-6, abs=1e-9):
            ignored.append(f"{flag} {default} -> {2 * default + 0.25}: losses stay {baseline.losses}")
    assert not ignored, f"{script.name}: loss-weight flags that do not reach the loss: {ignored}"
