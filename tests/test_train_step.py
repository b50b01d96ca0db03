"""utils/training.py TrainStep as a user relies on it: the gradient the optimizer steps with is
clipped to --grad-clip, and the non-finite guard stops only on consecutive bad losses."""
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
