"""Optimizer and lr-schedule choice of make_train_step (utils.cli.add_schedule_args): Adam + multistep."""
import argparse
import math

import pytest
import torch
from torch import nn

from utils.cli import add_schedule_args
from utils.training import EMA, build_optimizer, cosine_restarts, make_train_step, multistep_with_warmup, split_steps


def schedule_args(*flags, steps=8, warmup=0):
    parser = argparse.ArgumentParser()
    add_schedule_args(parser, optimizer="adam", schedule="multistep")
    args = parser.parse_args(list(flags))
    args.lr, args.weight_decay, args.steps, args.warmup = 1.0, 0.0, steps, warmup
    args.amp, args.grad_clip, args.ema = "none", 0.0, 0.0
    return args


def lrs(train_step, steps):
    values = []
    for _ in range(steps):
        values.append(train_step.optimizer.param_groups[0]["lr"])
        train_step(train_step.params[0].sum() * 0.0)
    return values


def test_multistep_drops_lr_by_gamma_at_each_milestone_fraction():
    args = schedule_args("--milestones", "0.5", "0.75", "--lr-gamma", "0.1")
    train_step = make_train_step(nn.Linear(2, 2), args, torch.device("cpu"))
    assert type(train_step.optimizer) is torch.optim.Adam
    assert lrs(train_step, 8) == pytest.approx([1, 1, 1, 1, 0.1, 0.1, 0.01, 0.01])


def test_multistep_warms_up_linearly_first():
    optimizer = torch.optim.SGD(nn.Linear(1, 1).parameters(), lr=1.0)
    scheduler = multistep_with_warmup(optimizer, warmup_steps=2, milestones=[3], gamma=0.5)
    factors = []
    for _ in range(5):
        factors.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert factors == pytest.approx([0.5, 1.0, 1.0, 0.5, 0.5])


def test_adam_step_skips_a_nonfinite_loss():
    model = nn.Linear(2, 1)
    train_step = make_train_step(model, schedule_args(), torch.device("cpu"))
    before = [p.detach().clone() for p in model.parameters()]
    train_step(model(torch.ones(1, 2)).sum() * float("nan"))
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))
    train_step(model(torch.ones(1, 2)).sum())
    assert not all(torch.equal(a, b) for a, b in zip(before, model.parameters()))


def test_without_schedule_flags_the_recipe_stays_adamw_cosine():
    args = argparse.Namespace(lr=1.0, weight_decay=0.0, steps=4, warmup=0, amp="none", grad_clip=0.0, ema=0.0)
    train_step = make_train_step(nn.Linear(2, 2), args, torch.device("cpu"))
    assert type(train_step.optimizer) is torch.optim.AdamW
    assert lrs(train_step, 3)[1] < 1.0


def test_split_steps_cuts_the_total_into_proportional_periods_that_sum_exactly():
    assert split_steps(10, (0.4, 0.6)) == [4, 6]
    assert split_steps(7, (1, 1, 1)) == [2, 3, 2]
    assert split_steps(150_000, (46, 104)) == [46_000, 104_000]
    assert split_steps(2, (1, 1, 1)) == [1, 1, 1]  # no period shorter than one step


@pytest.mark.parametrize("fractions", [(), (1.0, 0.0), (1.0, -0.5)])
def test_split_steps_refuses_empty_or_non_positive_fractions(fractions):
    with pytest.raises(ValueError, match=r"cycle fractions must be positive, got \["):
        split_steps(10, fractions)


def restart_lrs(steps, **kwargs):
    model = nn.Linear(1, 1)
    optimizer = torch.optim.SGD([{"params": [model.weight]}, {"params": [model.bias], "lr": 0.5}], lr=1.0)
    scheduler = cosine_restarts(optimizer, **kwargs)
    values = []
    for _ in range(steps):
        values.append([group["lr"] for group in optimizer.param_groups])
        optimizer.step()
        scheduler.step()
    return values


def test_cosine_restarts_follows_each_period_from_its_restart_lr_to_its_eta():
    # periods 4 + 6 from steps 0 and 4; lr = eta + w (base - eta) (1 + cos(pi (t - start) / period)) / 2
    values = restart_lrs(13, total_steps=10, fractions=(0.4, 0.6), eta_mins=(0.5, 0.0), restart_weights=(1.0, 0.5))
    first = [lr for lr, _ in values]
    assert first[0] == pytest.approx(1.0)
    assert first[2] == pytest.approx(0.75)
    assert first[3] == pytest.approx(0.5 + 0.5 * 0.5 * (1 + math.cos(math.pi * 3 / 4)))
    assert first[4] == pytest.approx(0.5)  # the restart: w * base + (1 - w) * eta
    assert first[7] == pytest.approx(0.25)
    assert first[10:] == pytest.approx([0.0, 0.0, 0.0])  # past the total the lr stays at the last eta
    # a second param group's lr runs between the same etas from its own base lr (0.5, here the first eta)
    assert [values[t][1] for t in (0, 2, 4, 7, 10)] == pytest.approx([0.5, 0.5, 0.25, 0.125, 0.0])


def test_cosine_restarts_defaults_to_full_restarts_and_warms_up_linearly():
    values = restart_lrs(6, total_steps=6, fractions=(1, 1), eta_mins=(0.0, 0.0), warmup_steps=2)
    first = [lr for lr, _ in values]
    assert first[0] == pytest.approx(0.5)  # (step + 1) / warmup of the full lr
    assert first[1] == pytest.approx(0.75)  # cosine at 1/3 of the first period, warm-up complete
    assert first[3] == pytest.approx(1.0)  # restart weight 1 by default: back to the base lr
    assert first[4] == pytest.approx(0.75)


def test_cosine_restarts_needs_one_eta_and_one_weight_per_cycle():
    with pytest.raises(ValueError, match="2 cycles, 1 eta_mins, 2 restart weights"):
        restart_lrs(1, total_steps=10, fractions=(1, 1), eta_mins=(0.0,))
    with pytest.raises(ValueError, match="2 cycles, 2 eta_mins, 3 restart weights"):
        restart_lrs(1, total_steps=10, fractions=(1, 1), eta_mins=(0.0, 0.0), restart_weights=(1, 1, 1))


def test_build_optimizer_steps_trainable_parameters_and_extra_groups_with_their_own_settings():
    model = nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 2))
    model[0].requires_grad_(False)
    extra = nn.Parameter(torch.zeros(3))
    extra_group = {"params": [extra], "lr": 0.5}
    optimizer = build_optimizer(model, lr=0.1, weight_decay=0.02, betas=(0.8, 0.9), extra_groups=[extra_group])
    assert isinstance(optimizer, torch.optim.AdamW) and not isinstance(extra_group["params"], torch.Tensor)
    model_group, loss_group = optimizer.param_groups
    assert [tuple(p.shape) for p in model_group["params"]] == [(2, 2), (2,)]
    assert all(p is q for p, q in zip(model_group["params"], model[1].parameters()))
    assert model_group["lr"] == 0.1 and loss_group["lr"] == 0.5 and loss_group["params"] == [extra]
    for group in (model_group, loss_group):
        assert group["weight_decay"] == 0.02 and group["betas"] == (0.8, 0.9) and group["fused"] is True
    adam = build_optimizer(model, lr=0.1, weight_decay=0.0, kind="adam")
    assert type(adam) is torch.optim.Adam and adam.param_groups[0]["betas"] == (0.9, 0.999)
    assert len(adam.param_groups) == 1
    with pytest.raises(ValueError, match=r"--optimizer must be one of adamw, adam, got 'sgd'"):
        build_optimizer(model, lr=0.1, weight_decay=0.0, kind="sgd")


def recipe_args(**overrides):
    args = argparse.Namespace(lr=0.1, weight_decay=0.03, steps=10, warmup=2, amp="none", grad_clip=0.7, ema=0.9)
    vars(args).update(overrides)
    return args


def test_make_train_step_takes_the_shared_flags():
    model = nn.Linear(2, 2)
    train_step = make_train_step(model, recipe_args(), torch.device("cpu"))
    group = train_step.optimizer.param_groups[0]
    assert type(train_step.optimizer) is torch.optim.AdamW and group["initial_lr"] == 0.1
    assert group["weight_decay"] == 0.03 and group["betas"] == (0.9, 0.999)
    assert train_step.grad_clip == 0.7 and train_step.grad_accum == 1 and train_step.ddp is None
    assert not train_step.scaler.is_enabled()
    assert isinstance(train_step.ema, EMA) and train_step.ema.decay == 0.9 and train_step.ema.source is model
    # warm-up over --warmup, then cosine down to 1 % of --lr at --steps
    assert lrs(train_step, 11) == pytest.approx([0.05] + [0.001 + 0.099 * 0.5 * (1 + math.cos(math.pi * t / 8))
                                                         for t in (0, 0, 1, 2, 3, 4, 5, 6, 7, 8)])
    assert make_train_step(model, recipe_args(ema=0.0), torch.device("cpu")).ema is None
    assert make_train_step(model, recipe_args(amp="fp16"), torch.device("cpu")).scaler.is_enabled()
    assert make_train_step(model, recipe_args(grad_accum=3), torch.device("cpu")).grad_accum == 3


def test_make_train_step_keywords_override_the_flags():
    model = nn.Linear(2, 2)
    extra = nn.Parameter(torch.zeros(1))
    train_step = make_train_step(model, recipe_args(), torch.device("cpu"), lr=0.2, total_steps=4, weight_decay=0.0,
                                 betas=(0.5, 0.6), warmup=0, grad_clip=0.0, ema=False, min_lr_ratio=0.5,
                                 extra_groups=[{"params": [extra], "lr": 1.0}])
    group = train_step.optimizer.param_groups[0]
    assert group["weight_decay"] == 0.0 and group["betas"] == (0.5, 0.6)
    assert train_step.grad_clip == 0.0 and train_step.ema is None
    assert train_step.optimizer.param_groups[1]["params"] == [extra]
    assert lrs(train_step, 5) == pytest.approx([0.2, 0.2 * (0.5 + 0.5 * 0.5 * (1 + math.cos(math.pi / 4))), 0.15,
                                                0.2 * (0.5 + 0.5 * 0.5 * (1 + math.cos(3 * math.pi / 4))), 0.1])
    constant = make_train_step(model, recipe_args(), torch.device("cpu"),
                               scheduler=lambda optimizer: torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 0.25))
    assert lrs(constant, 3) == pytest.approx([0.025] * 3)
    milestones = make_train_step(model, schedule_args("--milestones", "0.5"), torch.device("cpu"), total_steps=4)
    assert lrs(milestones, 4) == pytest.approx([1, 1, 0.5, 0.5])


def test_make_train_step_refuses_an_unknown_schedule():
    with pytest.raises(ValueError, match="--schedule must be one of cosine, multistep, got 'linear'"):
        make_train_step(nn.Linear(2, 2), recipe_args(schedule="linear"), torch.device("cpu"))


class WrappedForDDP(nn.parallel.DistributedDataParallel):
    """Stands for a DistributedDataParallel wrapper (a real one needs a process group)."""

    def __init__(self, module):
        nn.Module.__init__(self)
        self.module = module


def test_make_train_step_finds_the_ddp_wrapper_to_skip_all_reduces_while_accumulating():
    wrapped = WrappedForDDP(nn.Linear(2, 2))
    train_step = make_train_step(wrapped, recipe_args(grad_accum=2), torch.device("cpu"))
    assert train_step.ddp is wrapped and wrapped.require_backward_grad_sync is False
