"""Optimizer and lr-schedule choice of make_train_step (utils.cli.add_schedule_args): Adam + multistep."""
import argparse

import pytest
import torch
from torch import nn

from utils.cli import add_schedule_args
from utils.training import make_train_step, multistep_with_warmup


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
