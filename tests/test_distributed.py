"""The multi-process recipes under torchrun (2 CPU processes, gloo) against one process.

One torchrun run per engine (module-scoped, ~10-20 s each on 2 cores); the single-process runs go
in-process through ``main(argv)``. Each engine must: train 2 processes x batch B exactly as 1 process
x batch 2B; leave a checkpoint that resumes on 1 process with the next step equal to the
uninterrupted run; write its run folder from rank 0 only; and give weights that enhance.py loads.
The window-aware loss term is off in these runs: it normalises by the over-exposed area of the whole
(per-process) batch, so it is not a per-image mean and 2 x B cannot equal 2B with it (the same holds
for --grad-accum); every other term of the baseline loss is on.
"""
import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.conftest import write_pairs
from utils.checkpoint import load_checkpoint
from utils.inference import load_enhancer

ROOT = Path(__file__).resolve().parents[1]
TINY_RESTORMER = ["--dim", "8", "--num-blocks", "1", "1", "1", "1", "--num-refinement-blocks", "1",
                  "--heads", "1", "1", "1", "1"]
# A warm-up longer than the run keeps the lr of a step independent of --steps (a 2-step run and the
# first 2 steps of a 3-step run agree): Adam moves each weight by ~lr/100, 2 lr/100, 3 lr/100. It also
# turns the all-reduce's rounding of near-zero gradients into differences of up to a few % of a step,
# so the lr is chosen per model to keep those within 1e-6 while the weights move well beyond it.
TRAINING = ["--warmup", "100", "--grad-clip", "0", "--window-weight", "0", "--amp", "none",
            "--workers", "0", "--val-every", "2", "--log-every", "1"]
TINY_MAMBA = ["--dim", "30", "--num-blocks", "1", "1", "1", "1", "--num-refinement-blocks", "1", "--mlp-ratio", "1"]
MAMBA_TRAINING = ["--warmup", "100", "--grad-clip", "0", "--amp", "none", "--workers", "0", "--val-every", "2",
                  "--log-every", "1"]


# DeepSpeed builds a CPU communication kernel at its first start (~40 s) into TORCH_EXTENSIONS_DIR:
# the cache .ci/run exports (else the same folder of this checkout), so that happens once per CI run.
EXTENSIONS_CACHE = os.environ.get("TORCH_EXTENSIONS_DIR", str(ROOT / ".cache" / "torch_extensions"))


def torchrun(script: str, argv: list, tmp: Path, nproc: int = 2) -> subprocess.CompletedProcess:
    """``torchrun --standalone --nproc_per_node nproc script argv`` with its temporary files (torchelastic
    folders, compile caches) inside ``tmp``; fails the test with the output on a non-zero exit."""
    env = {**os.environ, "TMPDIR": str(tmp), "TORCHINDUCTOR_CACHE_DIR": str(tmp / "inductor"),
           "TORCH_EXTENSIONS_DIR": EXTENSIONS_CACHE, "DS_ACCELERATOR": "cpu", "OMP_NUM_THREADS": "1",
           "PYTHONPATH": str(ROOT)}
    result = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                             f"--nproc_per_node={nproc}", str(ROOT / script), *argv],
                            cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, f"{script} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result


def weights(run_dir: Path) -> dict:
    return load_checkpoint(run_dir / "last.pt")["model"]


def assert_same_weights(a: dict, b: dict, atol: float = 1e-6) -> None:
    assert a.keys() == b.keys()
    worst = max((a[k].float() - b[k].float()).abs().max().item() for k in a)
    assert worst <= atol, f"weights differ by {worst:.3g}"


def assert_rank0_wrote_once(run_dir: Path, stdout: str) -> None:
    """Every metrics line once (two writers would double each (step, split)), the baseline printed once."""
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    counts = Counter((r["step"], r["split"]) for r in records)
    assert counts and max(counts.values()) == 1, counts
    assert stdout.count("identity baseline") == 1


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    """6 training + 2 validation 48x48 photo pairs."""
    root = tmp_path_factory.mktemp("distributed") / "data"
    write_pairs(root / "train", 6, seed=0)
    write_pairs(root / "val", 2, seed=1)
    return root


def tiny_mamba():
    from models.mambair import MambaIRUNet
    return MambaIRUNet(dim=30, num_blocks=[1, 1, 1, 1], num_refinement_blocks=1, mlp_ratio=1, bias=False)


def tiny_restormer():
    from models.restormer import Restormer
    return Restormer(dim=8, num_blocks=[1, 1, 1, 1], num_refinement_blocks=1, heads=[1, 1, 1, 1])


def run_in_process(script: str, argv: list):
    import importlib
    return importlib.import_module(script).main(argv)


def engine_runs(script: str, argv: list, tmp: Path, resume: bool = True):
    """``script`` with ``argv``: 2 processes x batch 1 for 2 steps under torchrun, then in-process
    1 x batch 2 for 2 steps, and (``resume``) for 3, and the 2-process run resumed on 1 process to 3."""
    two = torchrun(script, [*argv, "--batch-size", "1", "--steps", "2", "--out", str(tmp / "two")], tmp)
    module = Path(script).stem
    runs = [("one_2", 2, [])] + ([("one_3", 3, []), ("resumed", 3, ["--resume", str(tmp / "two")])] if resume else [])
    for name, steps, extra in runs:
        run_in_process(module, [*argv, "--batch-size", "2", "--steps", str(steps), "--out", str(tmp / name), *extra])
    return tmp, two.stdout


def check_equivalence(tmp: Path, tiny_model, two: str = "two", one: str = "one_2") -> None:
    two, one = weights(tmp / two), weights(tmp / one)
    assert_same_weights(two, one)
    torch.manual_seed(0)  # the runs' initial weights (--seed 0): training moved them well beyond the tolerance
    initial = tiny_model().state_dict()
    assert max((two[k] - initial[k]).abs().max().item() for k in two) > 5e-6


def check_resume(tmp: Path) -> None:
    assert load_checkpoint(tmp / "resumed" / "last.pt")["step"] == 3
    assert_same_weights(weights(tmp / "resumed"), weights(tmp / "one_3"))
    two_step, three_step = weights(tmp / "two"), weights(tmp / "one_3")
    assert max((two_step[k] - three_step[k]).abs().max().item() for k in two_step) > 5e-6


def check_enhances(checkpoint: Path) -> None:
    photo = np.random.default_rng(0).random((37, 53, 3), dtype=np.float32)
    enhanced = load_enhancer(checkpoint, tile=0).enhance(photo)
    assert enhanced.shape == photo.shape and np.isfinite(enhanced).all()
    assert 0 <= enhanced.min() and enhanced.max() <= 1 and np.abs(enhanced - photo).max() > 1e-3


def test_sharded_sampler_ranks_together_draw_the_single_process_batch_at_any_resume_step():
    from data.loaders import PatchSchedule, ResumableBatchSampler

    def take(sampler, count):
        stream = iter(sampler)
        return [next(stream) for _ in range(count)]

    for start in (0, 3):
        single = take(ResumableBatchSampler(7, PatchSchedule.constant(4), seed=5, start_step=start, grad_accum=2), 6)
        ranks = [take(ResumableBatchSampler(7, PatchSchedule.constant(2), seed=5, start_step=start, grad_accum=2,
                                            rank=rank, world_size=2), 6) for rank in (0, 1)]
        assert [a + b for a, b in zip(*ranks)] == single
    with pytest.raises(ValueError, match="rank"):
        ResumableBatchSampler(7, PatchSchedule.constant(2), seed=5, rank=2, world_size=2)


# --------------------------------------------------------------------------- DDP

@pytest.fixture(scope="module")
def ddp_runs(photos, tmp_path_factory):
    """On whole photos (--crop 0) with activation checkpointing (the recipe's default)."""
    return engine_runs("train_restormer_ddp.py", ["--data", str(photos), "--crop", "0", *TINY_RESTORMER, *TRAINING, "--lr", "1e-3"],
                       tmp_path_factory.mktemp("ddp"))


def test_ddp_two_processes_train_as_one_with_the_double_batch(ddp_runs):
    check_equivalence(ddp_runs[0], tiny_restormer)


def test_ddp_checkpoint_of_two_processes_resumes_on_one_as_the_uninterrupted_run(ddp_runs):
    check_resume(ddp_runs[0])


def test_ddp_run_folder_is_written_by_rank_0_only_with_the_plain_model_names(ddp_runs):
    tmp, stdout = ddp_runs
    assert_rank0_wrote_once(tmp / "two", stdout)
    config = json.loads((tmp / "two" / "config.json").read_text())
    assert config["world_size"] == 2 and config["crop"] is None and config["grad_checkpoint"]
    assert weights(tmp / "two").keys() == tiny_restormer().state_dict().keys()


def test_ddp_checkpoint_enhances_a_whole_photo(ddp_runs):
    check_enhances(ddp_runs[0] / "two")


# --------------------------------------------------------------------------- FSDP2 + DCP

@pytest.fixture(scope="module")
def fsdp_runs(photos, tmp_path_factory):
    """32-px crops, activation checkpointing inside the sharded blocks."""
    return engine_runs("train_restormer_fsdp_512.py", ["--data", str(photos), "--crop", "32", "--grad-checkpoint",
                                                        *TINY_RESTORMER, *TRAINING, "--lr", "1e-3"],
                       tmp_path_factory.mktemp("fsdp"))


def test_fsdp_two_processes_train_as_one_with_the_double_batch(fsdp_runs):
    check_equivalence(fsdp_runs[0], tiny_restormer)


def test_fsdp_dcp_checkpoint_of_two_processes_resumes_on_one_as_the_uninterrupted_run(fsdp_runs):
    tmp, _ = fsdp_runs
    saved = torch.load(tmp / "two" / "last.pt", weights_only=True)
    assert saved["model"] is None and saved["sharded"] == "sharded/step_0000002"
    shards = sorted(p.name for p in (tmp / "two" / saved["sharded"]).glob("*.distcp"))
    assert shards == ["__0_0.distcp", "__1_0.distcp"]  # one file per rank: really sharded
    check_resume(tmp)
    assert [p.name for p in (tmp / "resumed" / "sharded").iterdir()] == ["step_0000003"]  # older shards removed


def test_fsdp_run_folder_is_written_by_rank_0_only_with_the_plain_model_names(fsdp_runs):
    tmp, stdout = fsdp_runs
    assert_rank0_wrote_once(tmp / "two", stdout)
    assert json.loads((tmp / "two" / "config.json").read_text())["world_size"] == 2
    assert weights(tmp / "two").keys() == tiny_restormer().state_dict().keys()
    best = load_checkpoint(tmp / "two" / "best.pt")  # the full validated weights: the final step's
    assert_same_weights(best["model"], weights(tmp / "two"), atol=0)


def test_fsdp_sharded_checkpoint_and_run_folder_enhance(fsdp_runs):
    check_enhances(fsdp_runs[0] / "two" / "last.pt")
    check_enhances(fsdp_runs[0] / "two")


@pytest.fixture(scope="module")
def mamba_fsdp_runs(photos, tmp_path_factory):
    """MambaIR-UNet on 16-px crops (its CPU scan is slow; the resume path is the Restormer FSDP
    recipe's, the same code): 2 x 1 against 1 x 2 only."""
    return engine_runs("train_mamba_fsdp_512.py", ["--data", str(photos), "--crop", "16", "--val-crop", "16",
                                                    *TINY_MAMBA, *MAMBA_TRAINING, "--lr", "3e-4"],
                       tmp_path_factory.mktemp("mamba_fsdp"), resume=False)


def test_mamba_fsdp_two_processes_train_as_one_with_the_double_batch(mamba_fsdp_runs):
    check_equivalence(mamba_fsdp_runs[0], tiny_mamba)


def test_mamba_fsdp_run_is_written_by_rank_0_and_enhances(mamba_fsdp_runs):
    tmp, stdout = mamba_fsdp_runs
    assert_rank0_wrote_once(tmp / "two", stdout)
    assert weights(tmp / "two").keys() == tiny_mamba().state_dict().keys()
    check_enhances(tmp / "two" / "last.pt")


# --------------------------------------------------------------------------- DeepSpeed ZeRO

def series(runs: list, tmp: Path, nproc: int) -> str:
    """Several recipe runs (``[script module, argv]``) in one torchrun launch (tests/recipe_series.py)."""
    return torchrun("tests/recipe_series.py", [json.dumps(runs)], tmp, nproc).stdout


@pytest.fixture(scope="module")
def deepspeed_runs(photos, tmp_path_factory):
    """Two launches: 2 processes x batch 1 for 2 steps at ZeRO stages 1, 2, 3 (3 with activation
    checkpointing), stage 2 in bf16 (``--amp none`` replaced) and MambaIR-UNet at stage 3; then 1
    process x batch 2 (stage 2) for 2 and 3 steps, the stage-2 and stage-3 checkpoints resumed on 1
    process (universal) and the 1-process one resumed on 1 (the same world size), each to 3 steps.
    MambaIR's reference accumulates 2 micro-batches of 1 (--grad-accum 2): its 1 x 2 differs from
    2 x 1 by up to 1.5e-6 in a few weights whose gradients are ~1e-8 (the rounding of a batch-2
    backward against two batch-1 ones, amplified by Adam's eps; 1 x 2 differs as much from
    1 x 1 x 2); 2 x 1 and 1 x 1 x 2 run the same backward passes."""
    tmp = tmp_path_factory.mktemp("deepspeed")
    restormer = ["--data", str(photos), "--crop", "32", *TINY_RESTORMER, *TRAINING, "--lr", "1e-3"]
    mamba = ["--data", str(photos), "--crop", "16", "--val-crop", "16", *TINY_MAMBA, *MAMBA_TRAINING, "--lr", "3e-4"]
    recipe, mamba_recipe = "train_restormer_deepspeed_512", "train_mamba_deepspeed_512"
    stdout = series([[recipe, [*restormer, "--batch-size", "1", "--steps", "2", "--zero-stage", str(stage),
                               *extra, "--out", str(tmp / f"two_s{stage}")]]
                     for stage, extra in ((1, []), (2, []), (3, ["--grad-checkpoint"]))]
                    + [[recipe, [*restormer, "--batch-size", "1", "--steps", "2", "--amp", "bf16",
                                 "--out", str(tmp / "two_bf16")]]]
                    + [[mamba_recipe, [*mamba, "--batch-size", "1", "--steps", "2", "--zero-stage", "3",
                                       "--out", str(tmp / "mamba_two")]]], tmp, nproc=2)
    one = [*restormer, "--batch-size", "2", "--zero-stage", "2"]
    series([[recipe, [*one, "--steps", "2", "--out", str(tmp / "one_2")]],
            [recipe, [*one, "--steps", "3", "--out", str(tmp / "one_3")]],
            [recipe, [*one, "--steps", "3", "--resume", str(tmp / "one_2"), "--out", str(tmp / "resumed_same")]],
            [recipe, [*one, "--steps", "3", "--resume", str(tmp / "two_s2"), "--out", str(tmp / "resumed_s2")]],
            [recipe, [*restormer, "--batch-size", "2", "--zero-stage", "3", "--grad-checkpoint", "--steps", "3",
                      "--resume", str(tmp / "two_s3"), "--out", str(tmp / "resumed_s3")]],
            [mamba_recipe, [*mamba, "--batch-size", "1", "--grad-accum", "2", "--steps", "2", "--zero-stage", "3",
                            "--out", str(tmp / "mamba_one")]]], tmp, nproc=1)
    return tmp, stdout


def test_deepspeed_two_processes_train_as_one_with_the_double_batch_at_every_zero_stage(deepspeed_runs):
    tmp, _ = deepspeed_runs
    for stage in (1, 2, 3):
        assert_same_weights(weights(tmp / f"two_s{stage}"), weights(tmp / "one_2"))
    check_equivalence(tmp, tiny_restormer, two="two_s3", one="one_2")
    check_equivalence(tmp, tiny_mamba, two="mamba_two", one="mamba_one")  # stage 3, and --grad-accum


def test_deepspeed_bf16_trains_bf16_weights_on_fp32_masters_that_start_at_the_exact_weights(deepspeed_runs):
    tmp, _ = deepspeed_runs
    assert json.loads((tmp / "two_bf16" / "deepspeed_config.json").read_text())["bf16"]["enabled"]
    bf16, fp32 = weights(tmp / "two_bf16"), weights(tmp / "one_2")
    assert all(w.dtype == torch.float32 for w in bf16.values())
    torch.manual_seed(0)
    initial = tiny_restormer().state_dict()
    # 2 Adam steps of lr 1e-5 and 2e-5 (warm-up) move a weight by at most 3e-5; masters copied from
    # the bf16-cast weights would start up to ~1e-3 away
    assert max((bf16[k] - initial[k]).abs().max().item() for k in bf16) <= 3.01e-5
    assert 1e-7 < max((bf16[k] - fp32[k]).abs().max().item() for k in bf16)  # bf16 really ran


def test_deepspeed_checkpoint_of_two_processes_resumes_on_one_through_the_universal_checkpoint(deepspeed_runs):
    tmp, _ = deepspeed_runs
    for stage in (2, 3):
        assert (tmp / f"two_s{stage}" / "deepspeed" / "step_0000002_universal").is_dir()  # converted on the fly
        assert load_checkpoint(tmp / f"resumed_s{stage}" / "last.pt")["step"] == 3
        assert_same_weights(weights(tmp / f"resumed_s{stage}"), weights(tmp / "one_3"))
    assert_same_weights(weights(tmp / "resumed_same"), weights(tmp / "one_3"), atol=0)  # same world size: exact
    two_step, three_step = weights(tmp / "two_s2"), weights(tmp / "one_3")
    assert max((two_step[k] - three_step[k]).abs().max().item() for k in two_step) > 5e-6
    # the resumed run's own checkpoint: only its step, in the normal (not universal) layout
    assert sorted(p.name for p in (tmp / "resumed_s2" / "deepspeed").iterdir() if p.is_dir()) == ["step_0000003"]


def test_deepspeed_run_folder_is_written_by_rank_0_only_and_each_rank_its_partition(deepspeed_runs):
    tmp, stdout = deepspeed_runs
    run = tmp / "two_s2"
    assert stdout.count("identity baseline") == 5  # once per run of the launch: rank 0's
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    counts = Counter((r["step"], r["split"]) for r in records)
    assert counts and max(counts.values()) == 1, counts
    config = json.loads((run / "config.json").read_text())
    assert config["world_size"] == 2 and config["zero_stage"] == 2
    resolved = json.loads((run / "deepspeed_config.json").read_text())
    assert resolved["train_batch_size"] == 2 and resolved["zero_optimization"]["stage"] == 2
    shards = sorted(p.name for p in (run / "deepspeed" / "step_0000002").glob("*optim_states.pt"))
    assert shards == ["zero_pp_rank_0_mp_rank_00_optim_states.pt", "zero_pp_rank_1_mp_rank_00_optim_states.pt"]
    assert weights(run).keys() == tiny_restormer().state_dict().keys()
    best = load_checkpoint(run / "best.pt")  # the gathered fp32 weights of the final step
    assert_same_weights(best["model"], weights(run), atol=0)


def test_deepspeed_checkpoints_enhance_from_the_run_folder_and_last_pt(deepspeed_runs):
    tmp, _ = deepspeed_runs
    check_enhances(tmp / "two_s3")  # its best.pt: the gathered weights
    check_enhances(tmp / "mamba_two" / "last.pt")  # the zero_to_fp32 weights


def test_deepspeed_config_is_built_from_the_flags_and_the_file_wins(tmp_path):
    from types import SimpleNamespace
    from utils.deepspeed_engine import deepspeed_config
    args = SimpleNamespace(zero_stage=3, offload_optimizer=True, batch_size=4, grad_accum=2, lr=3e-4,
                           weight_decay=1e-4, grad_clip=0.01, amp="bf16", deepspeed_config=None)
    config = deepspeed_config(args, world_size=8, on_cuda=True)
    assert config["train_batch_size"] == 64 and config["gradient_accumulation_steps"] == 2
    assert config["zero_optimization"] == {"stage": 3, "offload_optimizer": {"device": "cpu", "pin_memory": True}}
    assert config["bf16"]["enabled"] and not config["fp16"]["enabled"] and config["gradient_clipping"] == 0.01
    assert "torch_adam" not in config["optimizer"]["params"]  # offload: DeepSpeed's CPU Adam
    file = tmp_path / "ds.json"
    file.write_text(json.dumps({"train_batch_size": 32, "zero_optimization": {"stage": 1}, "bf16": {"enabled": False},
                                "optimizer": {"params": {"lr": 1e-4}}}))
    args.deepspeed_config = str(file)
    config = deepspeed_config(args, world_size=8, on_cuda=True)
    assert config["zero_optimization"] == {"stage": 1, "offload_optimizer": {"device": "cpu", "pin_memory": True}}
    assert config["train_micro_batch_size_per_gpu"] == 2  # 32 images / (2 accumulated x 8 processes)
    assert (args.batch_size, args.amp, args.lr, args.weight_decay) == (2, "none", 1e-4, 1e-4)  # what the run uses


@pytest.mark.parametrize("content, message", [
    ("{'stage': 2}", "not valid JSON"),
    ("[1, 2]", "expected a JSON object"),
    ('{"train_batch_size": 30, "train_micro_batch_size_per_gpu": 4, "gradient_accumulation_steps": 2}',
     "train_batch_size 30 is not"),
    ('{"train_batch_size": 31}', "train_batch_size 31 is not"),  # not a multiple of the 2 processes
    ('{"bf16": {"enabled": true}, "fp16": {"enabled": true}}', "enable one"),
])
def test_deepspeed_bad_config_file_is_a_one_line_error(tmp_path, content, message):
    from types import SimpleNamespace
    from utils.deepspeed_engine import deepspeed_config
    file = tmp_path / "ds.json"
    file.write_text(content)
    args = SimpleNamespace(zero_stage=2, offload_optimizer=False, batch_size=4, grad_accum=1, lr=3e-4,
                           weight_decay=1e-4, grad_clip=0.0, amp="none", deepspeed_config=str(file))
    with pytest.raises(ValueError, match=message) as error:
        deepspeed_config(args, world_size=2, on_cuda=False)
    assert "\n" not in str(error.value) and str(file) in str(error.value)


def test_deepspeed_config_that_deepspeed_refuses_ends_the_recipe_with_one_line(photos, tmp_path):
    """A single process without torchrun (a process group of one), through the recipe's command line."""
    file = tmp_path / "ds.json"
    file.write_text(json.dumps({"zero_optimization": {"stage": 7}}))
    env = {**os.environ, "TMPDIR": str(tmp_path), "TORCH_EXTENSIONS_DIR": EXTENSIONS_CACHE, "DS_ACCELERATOR": "cpu",
           "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    result = subprocess.run([sys.executable, str(ROOT / "train_restormer_deepspeed_512.py"), "--data", str(photos),
                             "--crop", "32", *TINY_RESTORMER, "--steps", "1", "--workers", "0",
                             "--deepspeed-config", str(file), "--out", str(tmp_path / "run")],
                            cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 2, result.stderr[-2000:]
    error_lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(error_lines) == 1 and "DeepSpeed refused the config" in error_lines[0] and "stage" in error_lines[0]
    assert "Traceback" not in result.stderr


def test_deepspeed_non_finite_gradient_norm_stops_the_run_at_logging_time():
    from utils.deepspeed_engine import EngineSteps
    from utils.training import NonFiniteLossError

    class Engine:
        norm, micro_steps = float("nan"), 3

        def get_global_grad_norm(self):
            return self.norm

        def fp16_enabled(self):
            return False

        def gradient_accumulation_steps(self):
            return 2

    engine = Engine()
    steps = EngineSteps(engine)
    assert not steps.stepped  # the 3rd micro-batch of 2-batch steps ends none
    with pytest.raises(NonFiniteLossError, match="non-finite"):
        steps.check()
    engine.norm = None  # the norm's computation turned off in the config: nothing to check
    steps.check()
    engine.norm, engine.micro_steps = 0.5, 4
    steps.check()
    assert steps.stepped and steps.grad_norm == 0.5
