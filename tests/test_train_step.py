"""utils/training.py TrainStep as a user relies on it: the gradient the optimizer steps with is
clipped to --grad-clip, and the non-finite guard stops only on consecutive bad losses."""
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from utils.training import NonFiniteLossError, TrainStep, build_optimizer, cosine_with_warmup, make_grad_scaler


def train_step_for(model, amp="none", grad_clip=0.0, max_bad_steps=3):
    optimizer = build_optimizer(model, lr=1e-3, weight_decay=0.0)
    scheduler = cosine_with_warmup(optimizer, warmup_steps=1, total_steps=20)
    return TrainStep(optimizer, scheduler, make_grad_scaler(amp, torch.device("cpu")), grad_clip=grad_clip,
                     max_bad_steps=max_bad_steps)


def norms_at_optimizer_steps(train_step):
    """The global gradient norm the optimizer sees at each step (recorded by a step pre-hook)."""
    norms = []

    def record(optimizer, args, kwargs):
        grads = [p.grad for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
        norms.append(torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads])).item())
    train_step.optimizer.register_step_pre_hook(record)
    return norms


@pytest.mark.parametrize("amp", ["none", "fp16"])
def test_gradient_the_optimizer_uses_is_clipped_to_grad_clip(amp):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 3, 3, padding=1))
    x = torch.rand(2, 3, 16, 16)
    clipped = train_step_for(model, amp, grad_clip=0.01)
    norms = norms_at_optimizer_steps(clipped)
    for _ in range(3):
        clipped(((model(x) - 1) ** 2).mean() * 100)
    assert len(norms) == 3
    assert all(norm <= 0.01 * (1 + 1e-4) for norm in norms)
    assert all(norm > 0.5 * 0.01 for norm in norms)  # clipped to the bound, not zeroed
    assert clipped.grad_norm.item() > 0.01  # the reported norm is the one before clipping
    free = train_step_for(model, amp, grad_clip=0.0)
    free_norms = norms_at_optimizer_steps(free)
    free(((model(x) - 1) ** 2).mean() * 100)
    assert free_norms[0] == pytest.approx(free.grad_norm.item(), rel=1e-4) and free_norms[0] > 0.01


def test_good_steps_between_bad_ones_keep_a_run_alive():
    model = nn.Conv2d(3, 3, 1)
    train_step = train_step_for(model, max_bad_steps=3)
    x = torch.rand(1, 3, 4, 4)
    for bad in (True, False, True, False, True):  # 3 bad losses, never 2 in a row
        loss = (model(x) - x).abs().mean()
        train_step(loss * float("nan") if bad else loss)
    train_step.check()  # the guard is read at logging time, after the whole interval
    for _ in range(3):
        train_step(model(x).mean() * float("inf"))
    with pytest.raises(NonFiniteLossError, match="3 steps in a row"):
        train_step.check()


def test_a_streak_within_a_logging_interval_is_caught_after_good_steps_follow():
    model = nn.Conv2d(3, 3, 1)
    train_step = train_step_for(model, max_bad_steps=2)
    x = torch.rand(1, 3, 4, 4)
    for bad in (True, True, False, False):
        loss = (model(x) - x).abs().mean()
        train_step(loss * float("nan") if bad else loss)
    with pytest.raises(NonFiniteLossError, match="2 steps in a row"):
        train_step.check()


def grads_at_optimizer_steps(train_step):
    """A copy of every gradient the optimizer steps with, per step (recorded by a step pre-hook)."""
    grads = []
    train_step.optimizer.register_step_pre_hook(
        lambda optimizer, args, kwargs: grads.append([p.grad.clone() for p in train_step.params]))
    return grads


@pytest.mark.parametrize("grad_accum", [2, 3])
def test_accumulated_micro_batches_step_once_with_the_gradient_of_their_mean_loss(grad_accum):
    torch.manual_seed(0)
    model = nn.Conv2d(3, 3, 3, padding=1)
    batches = [torch.rand(1, 3, 6, 6) for _ in range(grad_accum)]
    model.zero_grad()
    torch.stack([(model(x) - 1).square().mean() for x in batches]).mean().backward()
    expected = [p.grad.clone() for p in model.parameters()]
    model.zero_grad(set_to_none=True)
    optimizer = build_optimizer(model, lr=1e-3, weight_decay=0.0)
    train_step = TrainStep(optimizer, cosine_with_warmup(optimizer, 1, 20), make_grad_scaler("none", torch.device("cpu")),
                           grad_accum=grad_accum)
    grads = grads_at_optimizer_steps(train_step)
    for step in range(2):
        for index, x in enumerate(batches):
            train_step((model(x) - 1).square().mean())
            assert train_step.stepped == (index == grad_accum - 1)
        assert len(grads) == step + 1
    for grad, want in zip(grads[0], expected):
        torch.testing.assert_close(grad, want)


def conv_with_accumulating_step(grad_accum: int):
    """A 1x1 conv and its TrainStep (AdamW, warm-up cosine, no scaler) stopping after 2 bad steps."""
    model = nn.Conv2d(3, 3, 1)
    optimizer = build_optimizer(model, lr=1e-3, weight_decay=0.0)
    scaler = make_grad_scaler("none", torch.device("cpu"))
    return model, TrainStep(optimizer, cosine_with_warmup(optimizer, 1, 20), scaler, max_bad_steps=2,
                            grad_accum=grad_accum)


def test_a_bad_loss_in_any_micro_batch_counts_its_step_as_bad():
    model, train_step = conv_with_accumulating_step(3)
    x = torch.rand(1, 3, 4, 4)

    def micro_batch(bad):  # a NaN loss value whose gradient is finite: only the loss guard can see it
        loss = (model(x) - x).abs().mean()
        train_step(loss + torch.tensor(float("nan")) if bad else loss)
    before = [p.detach().clone() for p in model.parameters()]
    for bad in (True, False, False):
        micro_batch(bad)
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))  # the bad step was skipped
    # good, bad (in a middle micro-batch), good: no streak of 2, as the marks of a bad step end with it
    for bad in (False, False, False, False, True, False, False, False, False):
        micro_batch(bad)
    train_step.check()
    for bad in (True, False, False, False, True, False):
        micro_batch(bad)
    with pytest.raises(NonFiniteLossError, match="lower --lr, use --amp bf16 or none instead of fp16, or check the "
                                                  "data for corrupt images$"):
        train_step.check()


def test_train_step_defaults_neither_clip_nor_accumulate_and_stop_after_five_bad_losses():
    weight = nn.Parameter(torch.ones(1))  # a single learned tensor (e.g. a loss's weight) is enough
    optimizer = build_optimizer(nn.Module(), lr=1e-3, weight_decay=0.0, extra_groups=[{"params": [weight]}])
    train_step = TrainStep(optimizer, cosine_with_warmup(optimizer, 1, 20), make_grad_scaler("none", torch.device("cpu")))
    assert not train_step.stepped and train_step.grad_norm.item() == 0.0  # nothing stepped yet
    norms = norms_at_optimizer_steps(train_step)
    train_step((weight * 100).sum())
    assert train_step.stepped and norms == [pytest.approx(100.0)]  # not clipped
    for _ in range(4):
        train_step((weight * float("nan")).sum())
    train_step.check()
    for _ in range(5):
        train_step((weight * float("nan")).sum())
    with pytest.raises(NonFiniteLossError, match="5 steps in a row"):
        train_step.check()


def test_train_step_keeps_its_guard_on_the_parameters_device():
    weight = nn.Parameter(torch.ones(2, device="meta"))  # a device other than the default one
    optimizer = torch.optim.SGD([weight], lr=0.1)
    train_step = TrainStep(optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0),
                           make_grad_scaler("none", torch.device("cpu")))
    counters = (train_step.bad_streak, train_step.worst_streak, train_step.grad_norm, train_step.bad_micro_batch)
    assert {tensor.device.type for tensor in counters} == {"meta"}


def test_grad_accum_below_one_is_refused():
    optimizer = build_optimizer(nn.Linear(1, 1), lr=1e-3, weight_decay=0.0)
    with pytest.raises(ValueError, match="^--grad-accum must be >= 1, got 0$"):
        TrainStep(optimizer, cosine_with_warmup(optimizer, 1, 2), make_grad_scaler("none", torch.device("cpu")),
                  grad_accum=0)


@pytest.mark.parametrize("grad_accum", [1, 3])
def test_ddp_all_reduces_only_in_the_last_micro_batch_of_a_step(grad_accum):
    model = nn.Linear(2, 1)
    optimizer = build_optimizer(model, lr=1e-3, weight_decay=0.0)
    ddp = SimpleNamespace(require_backward_grad_sync=None)  # the flag DDP's forward reads
    train_step = TrainStep(optimizer, cosine_with_warmup(optimizer, 1, 20), make_grad_scaler("none", torch.device("cpu")),
                           grad_accum=grad_accum, ddp=ddp)
    flags = [ddp.require_backward_grad_sync]
    for _ in range(2 * grad_accum):
        train_step(model(torch.ones(1, 2)).sum())
        flags.append(ddp.require_backward_grad_sync)
    last = [index % grad_accum == grad_accum - 1 for index in range(2 * grad_accum + 1)]
    assert flags == last


def test_two_micro_batch_steps_count_a_bad_first_micro_batch_and_free_the_gradients():
    model, train_step = conv_with_accumulating_step(2)
    x = torch.rand(1, 3, 4, 4)
    for bad in (True, False, True, False):
        loss = (model(x) - x).abs().mean()
        train_step(loss + torch.tensor(float("nan")) if bad else loss)
        assert all((p.grad is None) == train_step.stepped for p in model.parameters())
    with pytest.raises(NonFiniteLossError, match="2 steps in a row"):
        train_step.check()


def test_train_step_state_holds_the_scale_of_fp16_only():
    def step_for(amp):
        model = nn.Linear(2, 1)
        train_step = train_step_for(model, amp)
        train_step(model(torch.ones(1, 2)).sum())
        return train_step
    fp16, plain = step_for("fp16"), step_for("none")
    fp16.scaler.update(new_scale=8.0)
    assert plain.state_dict()["scaler"] is None and fp16.state_dict()["scaler"]["scale"] == 8.0
    resumed = step_for("fp16")
    resumed.load_state_dict(plain.state_dict())  # a run that switches to fp16 starts from the initial scale
    assert resumed.scaler.get_scale() == 65536.0
    resumed.load_state_dict(fp16.state_dict())
    assert resumed.scaler.get_scale() == 8.0
