"""The plumbing the Retinex recipes added: the cyclic cosine schedule, batch mixup, extra views in the
validation grid, legacy key renames on loading, and report.py naming a Retinex run."""
import json
import math

import pytest
import torch

import report
from data.mixup import mixup_pairs
from models.retinexformer import RetinexFormer
from utils.checkpoint import CheckpointError, load_pretrained, rename_legacy_keys
from utils.training import cosine_restarts, split_steps
from utils.validation import stretch_for_display, validate


def lrs(scheduler, steps):
    values = []
    for _ in range(steps):
        values.append(scheduler.optimizer.param_groups[0]["lr"])
        scheduler.optimizer.step()
        scheduler.step()
    return values


def optimizer(lr=2e-4):
    return torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=lr, weight_decay=0.0)


def test_split_steps_sums_exactly_in_proportion():
    assert split_steps(150_000, [46, 104]) == [46_000, 104_000]
    assert sum(split_steps(7, [1, 1, 1])) == 7
    with pytest.raises(ValueError, match="positive"):
        split_steps(10, [1, 0])


def test_cosine_restarts_follows_the_official_two_cycles():
    # The official files: base 2e-4, etas (3e-4, 1e-6): cycle 1 rises to 3e-4, cycle 2 restarts at
    # 2e-4 and decays to 1e-6; beyond the end the lr stays at the last eta.
    values = lrs(cosine_restarts(optimizer(), 150, [46, 104], [3e-4, 1e-6]), 152)
    assert values[0] == pytest.approx(2e-4)
    assert values[23] == pytest.approx(2.5e-4)  # half-way through cycle 1: the mean of 2e-4 and 3e-4
    assert values[45] == pytest.approx(3e-4 - 0.5e-4 * (1 + math.cos(math.pi * 45 / 46)))
    assert values[46] == pytest.approx(2e-4)
    assert values[46 + 52] == pytest.approx(1e-6 + (2e-4 - 1e-6) / 2)
    assert values[150] == pytest.approx(1e-6) and values[151] == pytest.approx(1e-6)


def test_cosine_restarts_restart_weights_and_warmup():
    # periods 10 + 10, base 1, etas 0, restart weights 1 and 0.5, 4 warm-up steps
    values = lrs(cosine_restarts(optimizer(1.0), 20, [1, 1], [0.0, 0.0], restart_weights=[1.0, 0.5],
                                 warmup_steps=4), 20)
    assert values[0] == pytest.approx(0.25)
    assert values[2] == pytest.approx((1 + math.cos(math.pi * 0.2)) / 2 * 0.75)
    assert values[10] == pytest.approx(0.5)  # the second cycle restarts at half the base lr
    assert values[15] == pytest.approx(0.25)
    with pytest.raises(ValueError, match="one eta_min and one restart weight per cycle"):
        cosine_restarts(optimizer(), 10, [1, 1], [1e-6])


def test_mixup_uses_one_weight_and_permutation_for_input_and_target():
    torch.manual_seed(0)
    inp = torch.arange(8.0).view(8, 1, 1, 1).expand(8, 3, 2, 2)
    target = 2 * inp + 1  # an affine relation survives mixing only with the same weight and partner
    outcomes = [mixup_pairs(inp, target) for _ in range(40)]
    unchanged = sum(mixed is inp for mixed, _ in outcomes)
    assert 8 < unchanged < 32  # about half of the calls are the identity
    mixed_inp, mixed_target = mixup_pairs(inp, target, use_identity=False)
    assert not torch.equal(mixed_inp, inp)
    torch.testing.assert_close(mixed_target, 2 * mixed_inp + 1)
    assert mixed_inp.min() >= 0 and mixed_inp.max() <= 7


def test_mixup_is_reproducible_from_the_global_seed():
    inp, target = torch.rand(4, 3, 2, 2), torch.rand(4, 3, 2, 2)
    torch.manual_seed(3)
    first = [mixup_pairs(inp, target) for _ in range(5)]
    torch.manual_seed(3)
    second = [mixup_pairs(inp, target) for _ in range(5)]
    for (a, b), (c, d) in zip(first, second):
        assert torch.equal(a, c) and torch.equal(b, d)


def test_stretch_for_display_maps_each_image_to_its_own_range():
    maps = torch.stack([torch.linspace(2.0, 6.0, 12).view(3, 2, 2), torch.full((3, 2, 2), 5.0)])
    shown = stretch_for_display(maps)
    assert shown[0].min() == 0 and shown[0].max() == 1
    torch.testing.assert_close(shown[0], (maps[0] - 2.0) / 4.0)
    assert torch.count_nonzero(shown[1]) == 0


def test_validation_grid_rows_carry_the_sample_views():
    torch.manual_seed(0)
    model = RetinexFormer(n_feat=8, stage=1, num_blocks=[1, 1, 1])
    batches = [{"input": torch.rand(1, 3, 12, 16), "target": torch.rand(1, 3, 12, 16)} for _ in range(3)]
    metrics, samples = validate(model, batches, torch.device("cpu"), num_samples=2,
                                sample_views=lambda net, inputs: [net.illumination(inputs)])
    assert len(samples) == 2 and all(len(row) == 4 for row in samples)
    view = samples[0][3]
    assert view.shape == (3, 12, 16) and view.min() == 0 and view.max() == 1
    expected = stretch_for_display(model.illumination(batches[0]["input"]).detach())[0]
    torch.testing.assert_close(view, expected)
    _, plain = validate(model, batches, torch.device("cpu"), num_samples=2)
    assert all(len(row) == 3 for row in plain)


class _Renamed(torch.nn.Module):
    checkpoint_key_renames = ((r"^old\.", "new."),)

    def __init__(self):
        super().__init__()
        self.new = torch.nn.Linear(2, 2)
        self.old_but_current = torch.nn.Linear(2, 2)


def test_legacy_renames_apply_only_to_keys_the_model_lacks(capsys):
    model = _Renamed()
    older = {"old.weight": torch.ones(2, 2), "old.bias": torch.zeros(2),
             "old_but_current.weight": torch.eye(2), "old_but_current.bias": torch.ones(2)}
    renamed, applied = rename_legacy_keys(older, model)
    assert sorted(renamed) == sorted(model.state_dict())
    assert sorted(applied) == [("old.bias", "new.bias"), ("old.weight", "new.weight")]
    load_pretrained(model, {"params": older}, strict=True)
    assert torch.equal(model.new.weight, torch.ones(2, 2))
    assert "2 keys of an older _Renamed naming" in capsys.readouterr().out
    # a model without renames stays strict about the same file
    with pytest.raises(CheckpointError, match="missing"):
        load_pretrained(torch.nn.ModuleDict({"new": torch.nn.Linear(2, 2)}), {"params": older}, strict=True)


def test_report_names_a_retinex_run_by_its_width_and_channels(tmp_path):
    kwargs = dict(in_channels=4, out_channels=3, n_feat=8, stage=1, num_blocks=[1, 1, 1])
    (tmp_path / "config.json").write_text(json.dumps(
        {"model": {"class": "models.retinexformer.RetinexFormer", "kwargs": kwargs}}))
    run = report.Run(tmp_path, "retinex")
    assert run.architecture() == "RetinexFormer (n_feat 8, 4-channel input)"
    assert run.parameters() == sum(p.numel() for p in RetinexFormer(**kwargs).parameters())
