"""The elite colour refiner family: ColorRefiner, the frozen backbone, its output cache, the loss
weightings, and a refiner run end to end on a tiny backbone trained here for a few steps."""
import hashlib
import json

import numpy as np
import pytest
import torch

import train_elite_refiner_combined as combined
import train_restormer_512_combined_loss as backbone_recipe
from losses import L1Loss
from losses.weighting import NormalizedLoss, UncertaintyWeightedLoss
from models.padding import pad_to_multiple
from models.refiner import ColorRefiner
from models.restormer import Restormer
from tests.conftest import LocalConvNet, save_model_checkpoint, write_pairs
from utils.checkpoint import CheckpointError, load_checkpoint
from utils.refiner import FrozenBackbone
from data.io import read_image
from data.pairs import discover_pairs
from utils.inference import NetworkModel, Tiling, load_backbone, load_enhancer, official_restormer_kwargs

TINY_RESTORMER = dict(dim=8, num_blocks=[1, 1, 1, 1], num_refinement_blocks=1, heads=[1, 1, 1, 1])
REFINER_FLAGS = ["--steps", "4", "--crop", "32", "--batch-size", "2", "--refiner-width", "8", "--refiner-blocks",
                 "1", "--backbone-tile", "0", "--val-every", "2", "--workers", "0", "--num-samples", "1"]


def sha256(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    write_pairs(root / "train", 4, seed=0)
    write_pairs(root / "val", 2, seed=1)
    return root


@pytest.fixture(scope="module")
def trained_backbone(data, tmp_path_factory):
    """A tiny Restormer trained for 3 steps by its own recipe: its run folder."""
    out = tmp_path_factory.mktemp("backbone")
    backbone_recipe.main(["--data", str(data), "--steps", "3", "--crop", "32", "--batch-size", "2", "--dim", "8",
                          "--num-blocks", "1", "1", "1", "1", "--num-refinement-blocks", "1", "--heads", "1", "1", "1",
                          "1", "--val-every", "3", "--workers", "0", "--out", str(out), "--num-samples", "0"])
    return out


@pytest.fixture(scope="module")
def predict_calls(trained_backbone):
    """Counts the backbone's whole-photo inferences (NetworkModel.predict) while a test runs."""
    calls = []
    original = NetworkModel.predict

    def counting(self, rgb, photo_cache=None):
        calls.append(self.source)
        return original(self, rgb, photo_cache)

    patch = pytest.MonkeyPatch()
    patch.setattr(NetworkModel, "predict", counting)
    yield calls
    patch.undo()


@pytest.fixture(scope="module")
def refiner_run(data, trained_backbone, predict_calls, tmp_path_factory):
    """A 4-step refiner run: (run folder, backbone file hash before it, backbone predict calls made)."""
    out = tmp_path_factory.mktemp("refiner")
    before = sha256(trained_backbone / "best.pt")
    predict_calls.clear()
    combined.main(["--data", str(data), "--backbone", str(trained_backbone), "--out", str(out)] + REFINER_FLAGS)
    return out, before, len(predict_calls)


def test_refiner_output_equals_backbone_output_at_initialisation():
    torch.manual_seed(0)
    refiner = ColorRefiner(width=8, num_blocks=1, scale=4)
    base, photo = torch.rand(2, 3, 37, 51), torch.rand(2, 3, 37, 51)
    refined = refiner(torch.cat([base, photo], 1))
    assert torch.equal(refined, base)


def test_refiner_learns_a_colour_shift_from_zero_initialisation():
    torch.manual_seed(0)
    refiner = ColorRefiner(width=8, num_blocks=1, scale=2)
    base, photo = torch.rand(2, 3, 16, 16), torch.rand(2, 3, 16, 16)
    target = (base * 0.8 + 0.1)
    optimizer = torch.optim.Adam(refiner.parameters(), lr=1e-2)
    errors = []
    for _ in range(30):
        loss = (refiner(torch.cat([base, photo], 1)) - target).abs().mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        errors.append(loss.item())
    assert errors[-1] < 0.5 * errors[0]


def test_uncertainty_weighting_follows_kendall_and_logs_its_weights():
    class Constant(torch.nn.Module):
        def __init__(self, value):
            super().__init__()
            self.value = value

        def forward(self, pred, target, inp=None):
            return (pred * 0).sum() + self.value

    criterion = UncertaintyWeightedLoss({"a": Constant(2.0), "b": Constant(0.5)})
    with torch.no_grad():
        criterion.log_vars.copy_(torch.tensor([0.5, -1.0]))
    values = criterion(torch.zeros(1, 3, 2, 2, requires_grad=True), torch.zeros(1, 3, 2, 2))
    expected = np.exp(-0.5) * 2.0 + 0.5 + np.exp(1.0) * 0.5 - 1.0
    assert values["loss"].item() == pytest.approx(expected, rel=1e-6)
    assert values["weight_a"].item() == pytest.approx(np.exp(-0.5), rel=1e-6)
    values["loss"].backward()
    # d/ds (exp(-s) L + s) = 1 - exp(-s) L: the weight moves towards 1 / L
    assert criterion.log_vars.grad.tolist() == pytest.approx([1 - np.exp(-0.5) * 2.0, 1 - np.exp(1.0) * 0.5], rel=1e-5)


def test_normalised_terms_are_divided_by_their_running_maximum():
    criterion = NormalizedLoss({"l1": (0.6, L1Loss())})
    target = torch.zeros(1, 3, 4, 4)
    first = criterion(torch.full((1, 3, 4, 4), 0.5), target)
    assert first["l1"].item() == pytest.approx(0.5) and first["l1_norm"].item() == pytest.approx(1.0)
    second = criterion(torch.full((1, 3, 4, 4), 0.25), target)
    assert second["l1_norm"].item() == pytest.approx(0.5) and second["loss"].item() == pytest.approx(0.3)
    third = criterion(torch.full((1, 3, 4, 4), 1.0), target)  # a new maximum
    assert third["l1_norm"].item() == pytest.approx(1.0)
    assert criterion.state_dict()["running_max"].tolist() == pytest.approx([1.0])


def test_backbone_is_frozen_for_good(trained_backbone):
    member, file, digest = load_backbone(trained_backbone, "cpu")
    assert file.name == "best.pt" and digest == sha256(file)
    model = member.model
    assert not any(p.requires_grad for p in model.parameters())
    model.train()  # what validation does after scoring
    assert not model.training and not any(m.training for m in model.modules())


def test_refiner_run_keeps_the_backbone_bit_identical_and_trains_only_the_refiner(refiner_run, trained_backbone):
    out, before, _ = refiner_run
    assert sha256(trained_backbone / "best.pt") == before
    saved = load_checkpoint(out / "last.pt")
    assert saved["config"]["refiner"]["backbone_sha256"] == before
    # the refiner checkpoint holds the refiner alone: no backbone weights, no backbone optimizer state
    assert all(not k.startswith(("patch_embed", "encoder_level")) for k in saved["model"])
    refiner_size = sum(v.numel() for v in saved["model"].values())
    assert sum(p.numel() for group in saved["optimizer"]["state"].values() for p in [group["exp_avg"]]) == refiner_size
    assert saved["model"]["conv_out.weight"].abs().sum() > 0  # the refiner did learn


def test_only_refiner_parameters_receive_gradients(trained_backbone):
    member, _, _ = load_backbone(trained_backbone, "cpu")
    refiner = ColorRefiner(width=8, num_blocks=1)
    photo = torch.rand(1, 3, 32, 32)
    base = member.model(photo)
    refiner(torch.cat([base, photo], 1)).mean().backward()
    assert all(p.grad is None for p in member.model.parameters())
    assert refiner.conv_out.weight.grad is not None and refiner.conv_out.weight.grad.abs().sum() > 0


def test_backbone_outputs_are_computed_once_and_reused(refiner_run, data, trained_backbone, predict_calls, tmp_path):
    out, _, first_calls = refiner_run
    assert first_calls == 6  # 4 training + 2 validation photos, once each
    cache_files = sorted((trained_backbone / "backbone_outputs").rglob("*.png"))
    assert len(cache_files) == 6
    stamps = [f.stat().st_mtime_ns for f in cache_files]
    predict_calls.clear()
    combined.main(["--data", str(data), "--backbone", str(trained_backbone), "--out", str(tmp_path / "again")]
                  + REFINER_FLAGS)
    assert predict_calls == []  # a second run makes no backbone call
    assert [f.stat().st_mtime_ns for f in cache_files] == stamps


def test_refined_output_equals_backbone_at_step_zero(refiner_run):
    out, _, _ = refiner_run
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    backbone_alone = next(r for r in records if r["split"] == "backbone")
    assert backbone_alone["step"] == 0 and np.isfinite(backbone_alone["psnr"])


def test_resume_reproduces_the_uninterrupted_run(data, trained_backbone, tmp_path):
    def run(out, steps, resume=None):
        argv = ["--data", str(data), "--backbone", str(trained_backbone), "--out", str(out)] + REFINER_FLAGS
        argv[argv.index("--steps") + 1] = str(steps)
        return combined.main(argv + (["--resume", str(out)] if resume else []))

    straight = run(tmp_path / "straight", 4).state.model.state_dict()
    run(tmp_path / "split", 2)
    resumed = run(tmp_path / "split", 4, resume=True).state.model.state_dict()
    assert all(torch.equal(straight[k], resumed[k]) for k in straight)


def test_enhance_runs_backbone_then_refiner(refiner_run, trained_backbone):
    out, _, _ = refiner_run
    photo = np.random.default_rng(0).random((37, 51, 3), dtype=np.float32)
    enhanced = load_enhancer(out, tile=0).enhance(photo)
    member, _, _ = load_backbone(trained_backbone, "cpu", tiling=Tiling(tile=0))
    base = member.predict(photo)
    checkpoint = load_checkpoint(out / "best.pt")
    refiner = ColorRefiner(**checkpoint["config"]["model"]["kwargs"])
    refiner.load_state_dict(checkpoint["ema"])
    stacked = torch.cat([base, torch.from_numpy(photo).permute(2, 0, 1)[None]], 1)
    padded, _ = pad_to_multiple(stacked, 8)  # as enhance's whole-photo "tile": to the tile multiple
    with torch.no_grad():
        expected = refiner(padded)[..., :37, :51].clamp(0, 1)
    np.testing.assert_allclose(enhanced, expected[0].permute(1, 2, 0).numpy(), atol=1e-6)
    assert np.abs(enhanced - base[0].permute(1, 2, 0).numpy()).max() > 1e-5  # the refiner changed it


def test_changed_backbone_is_refused_on_resume_and_enhance_and_its_cache_is_not_reused(
        refiner_run, data, trained_backbone, tmp_path):
    out, _, _ = refiner_run
    changed = tmp_path / "changed"
    checkpoint = load_checkpoint(trained_backbone / "best.pt")
    checkpoint["ema"] = {k: v + 0.01 if v.is_floating_point() else v for k, v in checkpoint["ema"].items()}
    changed.mkdir()
    torch.save(checkpoint, changed / "best.pt")
    argv = ["--data", str(data), "--backbone", str(changed), "--out", str(out)] + REFINER_FLAGS
    with pytest.raises(CheckpointError, match="was trained on backbone .*pass the same, unchanged backbone"):
        combined.main(argv + ["--steps", "6", "--resume", str(out)])
    # the refiner's own backbone file changed in place: enhance says so
    record_file = trained_backbone / "best.pt"
    original = record_file.read_bytes()
    try:
        record_file.write_bytes((changed / "best.pt").read_bytes())
        with pytest.raises(CheckpointError, match="changed since the refiner was trained"):
            load_enhancer(out, tile=0)
        record_file.unlink()
        with pytest.raises(CheckpointError, match="backbone checkpoint not found"):
            load_enhancer(out, tile=0)
    finally:
        record_file.write_bytes(original)


def test_cache_follows_the_backbone_hash(trained_backbone, data, tmp_path):
    pairs = discover_pairs(data / "val")["train"]
    member, file, digest = load_backbone(trained_backbone, "cpu")
    cached = FrozenBackbone(member, file, digest, tmp_path).aligned_outputs(pairs)["backbone"]
    other = FrozenBackbone(member, file, "0" * 64, tmp_path)  # another backbone file: another folder
    assert all(not other.output_path(pair.input).exists() for pair in pairs)
    assert other.aligned_outputs(pairs)["backbone"] != cached and other.computed == len(pairs)


@pytest.mark.parametrize("case, message", [
    ("missing", "backbone checkpoint not found"),
    ("unreadable", "cannot read checkpoint"),
    ("not_restormer", "expected a Restormer-family model"),
    ("channels", "takes 4 input channels but names no input features"),
    ("none", "--backbone is required"),
])
def test_bad_backbone_gives_one_line_naming_the_file(case, message, tmp_path):
    path = tmp_path / "backbone.pt"
    if case == "unreadable":
        path.write_bytes(b"not a checkpoint")
    elif case == "not_restormer":
        save_model_checkpoint(path, LocalConvNet(), {})
    elif case == "channels":
        kwargs = dict(TINY_RESTORMER, inp_channels=4)
        save_model_checkpoint(path, Restormer(**kwargs), kwargs)
    with pytest.raises(CheckpointError, match=message) as error:
        load_backbone(None if case == "none" else path, "cpu")
    assert "\n" not in str(error.value)
    if case != "none":
        assert str(path) in str(error.value)


def test_official_restormer_weights_load_as_backbone(tmp_path):
    torch.manual_seed(0)
    kwargs = dict(TINY_RESTORMER, num_blocks=[1, 2, 1, 1], heads=[1, 2, 2, 4], LayerNorm_type="BiasFree")
    model = Restormer(**kwargs)
    path = tmp_path / "restormer.pth"
    torch.save({"params": model.state_dict()}, path)
    inferred = official_restormer_kwargs(model.state_dict(), path)
    assert {k: inferred[k] for k in kwargs} == kwargs
    member, _, _ = load_backbone(path, "cpu")
    photo = torch.rand(1, 3, 16, 16)
    with torch.no_grad():
        assert torch.equal(member.model(photo), model.eval()(photo))


def test_report_puts_the_refiner_next_to_its_backbone(refiner_run, trained_backbone, data, tmp_path):
    import report
    out, _, _ = refiner_run
    report.main([str(trained_backbone), str(out), "--out", str(tmp_path / "report"), "--images", "1",
                 "--device", "cpu", "--tile", "0", "--data", str(data)])
    rows = [line for line in (tmp_path / "report" / "report.md").read_text().splitlines()
            if line.startswith("| ") and not line.startswith("| #")]
    scripts = {row.split("|")[3].strip(): row for row in rows}
    assert set(scripts) == {"`train_restormer_512_combined_loss`", "`train_elite_refiner_combined`"}
    assert f"ColorRefiner (width 8) on frozen {trained_backbone.name}" in scripts["`train_elite_refiner_combined`"]


def test_aligned_images_share_the_crop_and_flip_of_their_pair(data, tmp_path):
    from data.dataset import PairedDataset
    from data.io import write_image
    pairs = discover_pairs(data / "train")["train"]
    # the 'aligned' image of each pair is its input again, so every crop/flip must reproduce the input
    copies = []
    for pair in pairs:
        copies.append(tmp_path / f"{pair.name}.png")
        write_image(copies[-1], read_image(pair.input), bit_depth=16)
    dataset = PairedDataset(pairs, crop=24, augment=True, aligned={"backbone": copies})
    for draw in range(8):
        sample = dataset[(draw % len(pairs), draw)]
        assert sample["backbone"].shape == sample["input"].shape == (3, 24, 24)
        assert torch.allclose(sample["backbone"], sample["input"], atol=1 / 255)
    with pytest.raises(ValueError, match="aligned images 'backbone': 1 paths for 4 pairs"):
        PairedDataset(pairs, aligned={"backbone": copies[:1]})


def test_curriculum_draws_easy_pairs_first_and_resumes_exactly():
    from data.curriculum import CurriculumStream
    from data.loaders import PatchSchedule, ResumableBatchSampler
    ranking = [3, 0, 2, 1, 5, 4, 7, 6]  # easiest first
    stream = CurriculumStream(ranking, seed=0, ramp_draws=40, start_fraction=0.25)
    assert stream.fraction(0) == 0.25 and stream.fraction(20) == pytest.approx(0.625) and stream.fraction(40) == 1
    batches = ResumableBatchSampler(8, PatchSchedule.constant(2), seed=0, stream=stream)
    drawn = [batch for _, batch in zip(range(30), iter(batches))]
    assert {index for batch in drawn[:2] for index, _ in batch} <= {3, 0}  # steps 0-1: the easiest quarter
    assert len({index for batch in drawn for index, _ in batch}) > 4  # the pool grew
    resumed = ResumableBatchSampler(8, PatchSchedule.constant(2), seed=0, start_step=7, stream=stream)
    assert [batch for _, batch in zip(range(23), iter(resumed))] == drawn[7:]


def test_backbone_in_loop_runs_the_frozen_backbone_on_the_crop(trained_backbone):
    member, file, digest = load_backbone(trained_backbone, "cpu")
    backbone = FrozenBackbone(member, file, digest, trained_backbone / "unused", in_loop=True)
    assert backbone.aligned_outputs([], "train") == {}  # no cached outputs read for training
    batch = {"input": torch.rand(2, 3, 16, 16), "target": torch.rand(2, 3, 16, 16)}
    inp, base, target = backbone.batch(batch, torch.device("cpu"))
    with torch.no_grad():
        assert torch.equal(base, member.model(inp).clamp(0, 1)) and not base.requires_grad
