import json
import math
import os
import random
import re
import sys
import warnings
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch import nn

from safetensors.torch import save_file

from utils.checkpoint import (EXPORT_FORMAT, CheckpointError, _read_error, build_model, extract_state_dict,
                              load_checkpoint, load_exported, load_pretrained, load_pretrained_expanding,
                              load_pretrained_restormer, model_spec, read_export_config, read_sharded_weights,
                              refused_globals, rename_legacy_keys, rng_state, save_checkpoint, set_rng_state,
                              unwrap_model)
from models.padding import pad_to_multiple
from utils.tiling import _blend_ramp, tiled_forward
from utils.training import (EMA, LossTracker, NonFiniteLossError, TrainingState, TrainStep, amp_dtype, autocast,
                            build_optimizer, configure_backend, cosine_with_warmup, find_ddp, make_grad_scaler,
                            make_train_step, resolve_amp, seed_everything, select_device)


class TinyNet(nn.Module):
    def __init__(self, width: int = 4):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, width, 3, padding=1), nn.ReLU(), nn.Conv2d(width, 3, 3, padding=1))
        self.register_buffer("calls", torch.zeros(()))

    def forward(self, x):
        return x + self.body(x)


def _step_pieces(model, amp="none", clip=0.0, lr=1e-2):
    optimizer = build_optimizer(model, lr=lr, weight_decay=0.0)
    scheduler = cosine_with_warmup(optimizer, warmup_steps=2, total_steps=10)
    scaler = make_grad_scaler(amp, torch.device("cpu"))
    return optimizer, scheduler, scaler, TrainStep(optimizer, scheduler, scaler, grad_clip=clip, max_bad_steps=3)


def test_cosine_with_warmup_shape():
    optimizer = build_optimizer(TinyNet(), lr=1.0, weight_decay=0.0)
    scheduler = cosine_with_warmup(optimizer, warmup_steps=4, total_steps=14, min_lr_ratio=0.0)
    lrs = []
    for _ in range(15):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert lrs[:4] == pytest.approx([0.25, 0.5, 0.75, 1.0])
    assert lrs[9] == pytest.approx(0.5)
    assert lrs[14] == pytest.approx(0.0, abs=1e-12)


def test_train_step_skips_nonfinite_loss_and_stops_after_streak():
    model = TinyNet()
    _, _, _, train_step = _step_pieces(model)
    before = [p.detach().clone() for p in model.parameters()]
    x = torch.rand(1, 3, 8, 8)
    train_step(model(x).mean() * float("nan"))
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))
    train_step.check()  # one bad step is tolerated
    train_step((model(x) - x).abs().mean())
    assert not all(torch.equal(a, b) for a, b in zip(before, model.parameters()))
    for _ in range(3):
        train_step(model(x).mean() * float("inf"))
    with pytest.raises(NonFiniteLossError, match="3 steps in a row"):
        train_step.check()


def test_train_step_fp16_scaler_path_updates():
    model = TinyNet()
    _, _, scaler, train_step = _step_pieces(model, amp="fp16")
    assert scaler.is_enabled()
    before = [p.detach().clone() for p in model.parameters()]
    x = torch.rand(1, 3, 8, 8)
    for _ in range(3):
        train_step((model(x) - 0.5).abs().mean())
    assert not all(torch.equal(a, b) for a, b in zip(before, model.parameters()))


def test_loss_decreases_on_fixed_batch_with_clipping():
    torch.manual_seed(0)
    model = TinyNet()
    _, _, _, train_step = _step_pieces(model, clip=0.5, lr=3e-3)
    x = torch.rand(2, 3, 16, 16)
    target = x ** 2
    losses = []
    for _ in range(10):
        loss = (model(x) - target).abs().mean()
        losses.append(loss.item())
        train_step(loss)
    assert losses[-1] < 0.8 * losses[0]


def test_ema_warmup_and_state_dict():
    model = TinyNet()
    ema = EMA(model, decay=0.999)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    ema.update()  # first decay = min(0.999, 2/11)
    first = next(model.parameters())
    ema_first = next(ema.module.parameters())
    shift = (ema_first - (first - 1.0)).mean().item()
    assert shift == pytest.approx(1 - 2 / 11, abs=1e-5)
    assert set(ema.state_dict()) == set(model.state_dict())
    assert not any(p.requires_grad for p in ema.module.parameters())


class NetWithStaticMask(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 4, 3, padding=1)
        self.norm = torch.nn.BatchNorm2d(4)
        self.register_buffer("mask", torch.ones(4, 1, 1))
        self.register_buffer("scratch", torch.zeros(1), persistent=False)

    def forward(self, x):
        self.scratch = self.scratch + 1  # a buffer a module reassigns
        return self.norm(self.conv(x)) * self.mask


def test_ema_copies_buffers_that_change_and_skips_static_ones():
    model = NetWithStaticMask().train()
    ema = EMA(model, decay=0.9)
    ema.module.mask.fill_(7.0)  # a sentinel: a copy of the static mask would overwrite it
    for step in range(3):
        model(torch.rand(2, 3, 8, 8) + step)
        ema.update()
        torch.testing.assert_close(ema.module.norm.running_mean, model.norm.running_mean)
        torch.testing.assert_close(ema.module.norm.running_var, model.norm.running_var)
        assert ema.module.norm.num_batches_tracked == model.norm.num_batches_tracked == step + 1
        assert ema.module.scratch.item() == model.scratch.item() == step + 1
    assert (ema.module.mask == 7.0).all()
    with torch.no_grad():
        model.mask.mul_(2.0)  # an in-place write to a buffer is followed too
    ema.update()
    assert (ema.module.mask == 2.0).all()
    ema.module.norm.running_mean.zero_()
    ema.load_state_dict(ema.state_dict(), num_updates=ema.num_updates)
    ema.update()  # after a resume every buffer is copied once
    torch.testing.assert_close(ema.module.norm.running_mean, model.norm.running_mean)


def test_loss_tracker_means():
    tracker = LossTracker()
    tracker.update({"loss": torch.tensor(1.0), "l1": torch.tensor(0.5)})
    tracker.update({"loss": torch.tensor(3.0), "l1": torch.tensor(1.5)})
    assert tracker.means() == {"loss": 2.0, "l1": 1.0}
    assert tracker.means() == {}


def test_training_state_round_trip_is_exact(tmp_path):
    args = SimpleNamespace(lr=1e-2, weight_decay=0.0, warmup=2, steps=6, amp="none", grad_clip=0.5, ema=0.9)

    def run(steps, resume=None, save_at=None):
        torch.manual_seed(0)
        model = TinyNet()
        train_step = make_train_step(model, args, torch.device("cpu"))
        config = {"model": model_spec(model, {"width": 4})}
        state = TrainingState(model=model, train_step=train_step, config=config)
        step = state.resume(resume)[0] if resume else 0
        while step < steps:
            x = torch.rand(2, 3, 8, 8)  # drawn from the global RNG, restored on resume
            train_step((model(x) - x.flip(-1)).abs().mean())  # also updates the EMA
            step += 1
            if step == save_at:
                state.save(tmp_path / "last.pt", step)
        return model, state.eval_model

    full, full_ema = run(6)
    run(6, save_at=3)
    resumed, resumed_ema = run(6, resume=tmp_path / "last.pt")
    assert full_ema is not full and not torch.equal(full_ema.body[0].weight, full.body[0].weight)
    for a, b in zip(full.state_dict().values(), resumed.state_dict().values()):
        assert torch.equal(a, b)
    for a, b in zip(full_ema.state_dict().values(), resumed_ema.state_dict().values()):
        assert torch.equal(a, b)


def test_resume_errors(tmp_path):
    model = TinyNet()
    optimizer, scheduler, scaler, train_step = _step_pieces(model)
    state = TrainingState(model=model, train_step=train_step, config={"model": model_spec(model, {"width": 4})})
    with pytest.raises(CheckpointError, match="not found"):
        state.resume(tmp_path / "missing.pt")
    (tmp_path / "corrupt.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="cannot read"):
        state.resume(tmp_path / "corrupt.pt")
    other = TinyNet(width=6)
    save_checkpoint(tmp_path / "other.pt", step=1, model=other, config={"model": model_spec(other, {"width": 6})},
                    optimizer=build_optimizer(other, 1e-3, 0.0), scheduler=scheduler)
    with pytest.raises(CheckpointError, match="same model flags"):
        state.resume(tmp_path / "other.pt")
    torch.save({"params": model.state_dict()}, tmp_path / "weights.pth")
    with pytest.raises(CheckpointError, match="--pretrained"):
        state.resume(tmp_path / "weights.pth")


@pytest.mark.parametrize("wrap", ["params", "params_ema", "state_dict", "model", "bare", "module_prefix",
                                  "compile_prefix", "ours"])
def test_load_pretrained_accepts_every_format(tmp_path, wrap):
    source = TinyNet()
    sd = source.state_dict()
    if wrap == "bare":
        payload = sd
    elif wrap == "module_prefix":
        payload = {"state_dict": {f"module.{k}": v for k, v in sd.items()}}
    elif wrap == "compile_prefix":
        payload = {"params": {f"_orig_mod.{k}": v for k, v in sd.items()}}
    elif wrap == "ours":
        save_checkpoint(tmp_path / "w.pt", step=0, model=source, config={})
        payload = None
    else:
        payload = {wrap: sd}
    if payload is not None:
        torch.save(payload, tmp_path / "w.pt")
    target = TinyNet()
    missing, unexpected = load_pretrained(target, tmp_path / "w.pt", strict=True)
    assert missing == [] and unexpected == []
    for a, b in zip(source.state_dict().values(), target.state_dict().values()):
        assert torch.equal(a, b)


def test_load_pretrained_prefers_ema_and_reports_mismatch(tmp_path):
    raw, averaged = TinyNet(), TinyNet()
    torch.save({"params": raw.state_dict(), "params_ema": averaged.state_dict()}, tmp_path / "w.pth")
    target = TinyNet()
    load_pretrained(target, tmp_path / "w.pth")
    assert torch.equal(target.body[0].weight, averaged.body[0].weight)
    wide = TinyNet(width=6)
    with pytest.raises(CheckpointError, match="shape mismatch"):
        load_pretrained(wide, tmp_path / "w.pth")
    missing, _ = load_pretrained(wide, {"params": {"body.0.bias": torch.zeros(6)}}, strict=False, verbose=False)
    assert "body.0.weight" in missing and torch.equal(wide.body[0].bias, torch.zeros(6))


def test_model_spec_rebuilds_the_model():
    model = TinyNet(width=5)
    rebuilt = build_model(model_spec(model, {"width": 5}))
    assert type(rebuilt) is TinyNet and rebuilt.body[0].out_channels == 5


def test_tiled_forward_matches_whole_for_a_local_model():
    torch.manual_seed(0)
    model = TinyNet().eval()
    image = torch.rand(1, 3, 61, 90)
    with torch.no_grad():
        whole = model(image)
    tiled = tiled_forward(model, image, tile=32, overlap=8, batch_size=3)
    assert tiled.shape == whole.shape
    # receptive field (5 px) < overlap: blended tiles reproduce the whole-image output
    assert (tiled - whole).abs().max().item() < 1e-5
    assert tiled_forward(model, image, tile=0).shape == whole.shape
    with pytest.raises(ValueError, match="multiple of 8"):
        tiled_forward(model, image, tile=30)


def test_pad_to_multiple():
    padded, size = pad_to_multiple(torch.rand(1, 3, 13, 8), 8)
    assert padded.shape[-2:] == (16, 8) and size == (13, 8)
    tiny, _ = pad_to_multiple(torch.rand(1, 3, 3, 3), 8)
    assert tiny.shape[-2:] == (8, 8)


def test_pad_to_multiple_reflects_the_bottom_and_right_edges():
    image = torch.arange(1.0, 10.0).view(1, 1, 3, 3)
    padded, size = pad_to_multiple(image, 4)
    assert size == (3, 3)
    assert padded[0, 0].tolist() == [[1, 2, 3, 2], [4, 5, 6, 5], [7, 8, 9, 8], [4, 5, 6, 5]]


@pytest.mark.parametrize("height, width", [(2, 3), (3, 2), (1, 3)])
def test_pad_to_multiple_replicates_where_one_pad_is_not_smaller_than_its_side(height, width):
    # reflection cannot cover a pad as large as the side: both sides are then replicated
    image = torch.rand(1, 2, height, width, generator=torch.Generator().manual_seed(0))
    padded, _ = pad_to_multiple(image, 4)
    expected = torch.nn.functional.pad(image, (0, 4 - width, 0, 4 - height), mode="replicate")
    assert torch.equal(padded, expected)


def test_tile_blend_ramp_is_zero_on_the_outer_quarter_of_the_overlap_then_a_raised_cosine():
    # overlap 8: 2 pixels at 0, then sin^2(pi/2 (k + 0.5) / 6) for k = 0..5, then 1 inside
    rise = [math.sin(0.5 * math.pi * (k + 0.5) / 6) ** 2 for k in range(6)]
    both = _blend_ramp(20, 8, ramp_start=True, ramp_end=True, device="cpu")
    assert both.tolist() == pytest.approx([0, 0, *rise, 1, 1, 1, 1, *rise[::-1], 0, 0], abs=1e-6)
    assert _blend_ramp(20, 8, ramp_start=False, ramp_end=True, device="cpu")[:12].tolist() == [1.0] * 12
    # overlap 1: no zero margin, one pixel at sin^2(pi/4) = 1/2; overlap 0: no ramp at all
    assert _blend_ramp(4, 1, ramp_start=True, ramp_end=False, device="cpu").tolist() == pytest.approx([0.5, 1, 1, 1])
    assert _blend_ramp(4, 0, ramp_start=True, ramp_end=True, device="cpu").tolist() == [1.0] * 4
    # built where asked: the meta device stands in for CUDA
    assert _blend_ramp(20, 8, ramp_start=True, ramp_end=True, device="meta").device.type == "meta"


def test_tiled_forward_of_an_image_shorter_than_a_tile_and_wider_than_several():
    image = torch.rand(1, 3, 16, 80, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(tiled_forward(lambda x: x, image, tile=32, overlap=8), image, atol=1e-6)


def test_select_device_auto_takes_cuda_only_when_available_and_refuses_a_missing_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert select_device() == torch.device("cpu") and select_device("auto") == torch.device("cpu")
    assert select_device("cpu") == torch.device("cpu")
    with pytest.raises(ValueError, match=r"--device cuda:1: CUDA is not available on this machine \(use --device cpu\)"):
        select_device("cuda:1")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert select_device("auto") == torch.device("cuda") and select_device("cuda:1") == torch.device("cuda:1")


def test_seed_everything_makes_python_numpy_and_torch_draws_repeat():
    def draws(seed):
        seed_everything(seed)
        return random.random(), float(np.random.rand()), torch.rand(1).item()
    assert draws(3) == draws(3)
    assert all(a != b for a, b in zip(draws(3), draws(4)))


def test_configure_backend_turns_on_cudnn_autotuning_and_tf32_on_cuda_only():
    flags = (torch.backends.cudnn.benchmark, torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)

    def current():
        return torch.backends.cudnn.benchmark, torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    try:
        torch.backends.cudnn.benchmark = torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
        configure_backend(torch.device("cpu"))
        assert current() == (False, False, False)
        configure_backend(torch.device("cuda"))
        assert current() == (True, True, True)
    finally:
        torch.backends.cudnn.benchmark, torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = flags


def test_resolve_amp_keeps_a_chosen_mode_and_picks_bf16_only_on_a_cuda_device_that_has_it(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: True)
    assert resolve_amp("fp16", torch.device("cuda")) == "fp16" and resolve_amp("none", torch.device("cuda")) == "none"
    assert resolve_amp(None, torch.device("cuda")) == "bf16"
    assert resolve_amp(None, torch.device("cpu")) == "none"
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: False)
    assert resolve_amp(None, torch.device("cuda")) == "none"


def test_autocast_runs_matmuls_in_the_amp_dtype_and_none_in_fp32():
    assert amp_dtype("none") is None and amp_dtype("bf16") is torch.bfloat16 and amp_dtype("fp16") is torch.float16
    a = torch.rand(4, 4)
    with autocast(torch.device("cpu"), "none"):
        assert not torch.is_autocast_enabled("cpu") and (a @ a).dtype == torch.float32
    for amp, dtype in (("bf16", torch.bfloat16), ("fp16", torch.float16)):
        with autocast(torch.device("cpu"), amp):
            assert torch.is_autocast_enabled("cpu") and (a @ a).dtype == dtype


def test_grad_scaler_scales_the_loss_for_fp16_only():
    assert make_grad_scaler("fp16", torch.device("cpu")).is_enabled()
    assert not make_grad_scaler("bf16", torch.device("cpu")).is_enabled()
    assert not make_grad_scaler("none", torch.device("cpu")).is_enabled()


def test_find_ddp_finds_the_ddp_wrapper_under_a_compile_wrapper():
    ddp = nn.parallel.DistributedDataParallel.__new__(nn.parallel.DistributedDataParallel)
    assert find_ddp(ddp) is ddp
    assert find_ddp(SimpleNamespace(_orig_mod=ddp)) is ddp
    assert find_ddp(SimpleNamespace(_orig_mod=TinyNet())) is None
    assert find_ddp(TinyNet()) is None


def _state_with_a_second_network(seed, width=4, amp="fp16", extra_modules=True):
    torch.manual_seed(seed)
    model, disc = TinyNet(), TinyNet(width)
    _, _, _, train_step = _step_pieces(model, amp=amp)
    _, _, _, disc_step = _step_pieces(disc, amp=amp)
    modules = {"disc": disc, "disc_step": disc_step} if extra_modules else None
    state = TrainingState(model=model, train_step=train_step, config={"model": model_spec(model, {"width": 4})},
                          extra_modules=modules)
    return model, disc, train_step, disc_step, state


def test_training_state_restores_a_second_network_its_step_the_fp16_scale_and_extra_values(tmp_path):
    model, disc, train_step, disc_step, state = _state_with_a_second_network(0)
    x = torch.rand(1, 3, 8, 8)
    for _ in range(2):
        train_step((model(x) - x).abs().mean())
        disc_step(disc(x).abs().mean())
    train_step.scaler.update(new_scale=8.0)
    disc_step.scaler.update(new_scale=4.0)
    state.save(tmp_path / "last.pt", step=2, extra={"best_psnr": 30.5})
    assert set(load_checkpoint(tmp_path / "last.pt")["extra"]["modules"]) == {"disc", "disc_step"}
    model2, disc2, train_step2, disc_step2, state2 = _state_with_a_second_network(1)
    assert state2.resume(tmp_path / "last.pt") == (2, {"best_psnr": 30.5})
    for a, b in [(model, model2), (disc, disc2)]:
        for p, q in zip(a.state_dict().values(), b.state_dict().values()):
            assert torch.equal(p, q)
    assert train_step2.scaler.get_scale() == 8.0 and disc_step2.scaler.get_scale() == 4.0
    assert disc_step2.scheduler.last_epoch == disc_step.scheduler.last_epoch == 2
    saved, resumed = disc_step.optimizer.state_dict()["state"], disc_step2.optimizer.state_dict()["state"]
    assert saved.keys() == resumed.keys() and all(torch.equal(saved[k]["exp_avg"], resumed[k]["exp_avg"]) for k in saved)


def test_resume_refuses_a_checkpoint_without_the_second_network_or_with_another_shape(tmp_path):
    *_, single = _state_with_a_second_network(0, extra_modules=False)
    single.save(tmp_path / "single.pt", step=1)
    *_, state = _state_with_a_second_network(0)
    with pytest.raises(CheckpointError, match="single.pt holds no state for disc, disc_step: it was written by a "
                                              "different training script$"):
        state.resume(tmp_path / "single.pt")
    state.save(tmp_path / "narrow.pt", step=1)
    *_, wider = _state_with_a_second_network(0, width=6)
    with pytest.raises(CheckpointError, match=r"^cannot resume from .*narrow\.pt: Error\(s\) in loading"):
        wider.resume(tmp_path / "narrow.pt")


def test_resume_across_ema_and_amp_choices(tmp_path):
    def run(ema, amp):
        torch.manual_seed(0)
        model = TinyNet()
        args = SimpleNamespace(lr=1e-2, weight_decay=0.0, warmup=1, steps=4, amp=amp, grad_clip=0.0, ema=ema)
        train_step = make_train_step(model, args, torch.device("cpu"))
        return model, TrainingState(model=model, train_step=train_step, config={"model": model_spec(model, {"width": 4})})
    model, state = run(ema=0.9, amp="fp16")
    state.train_step(model(torch.rand(1, 3, 8, 8)).abs().mean())
    state.scaler.update(new_scale=8.0)
    state.save(tmp_path / "ema_fp16.pt", step=1)
    plain_model, plain = run(ema=0.0, amp="none")
    assert plain.resume(tmp_path / "ema_fp16.pt")[0] == 1  # a run without EMA or loss scaling
    assert all(torch.equal(p, q) for p, q in zip(plain_model.parameters(), model.parameters()))
    plain.save(tmp_path / "plain.pt", step=1)
    _, state = run(ema=0.9, amp="fp16")
    assert state.resume(tmp_path / "plain.pt")[0] == 1 and state.scaler.get_scale() == 65536.0  # the initial scale


@pytest.mark.parametrize("payload", [{"optimizer": {}}, {"step": 1}, [1, 2]])
def test_resume_refuses_what_is_not_a_training_checkpoint(tmp_path, payload):
    model = TinyNet()
    *_, train_step = _step_pieces(model)
    state = TrainingState(model=model, train_step=train_step, config={"model": model_spec(model, {"width": 4})})
    torch.save(payload, tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match=r"other\.pt is not a training checkpoint of this codebase "
                                              r"\(to start from published weights use --pretrained\)$"):
        state.resume(tmp_path / "other.pt")


def test_resume_names_both_models_when_they_differ(tmp_path):
    other = TinyNet(width=6)
    *_, other_step = _step_pieces(other)
    other_spec = model_spec(other, {"width": 6})
    TrainingState(model=other, train_step=other_step, config={"model": other_spec}).save(tmp_path / "o.pt", step=1)
    model = TinyNet()
    *_, train_step = _step_pieces(model)
    spec = model_spec(model, {"width": 4})
    state = TrainingState(model=model, train_step=train_step, config={"model": spec})
    with pytest.raises(CheckpointError) as error:
        state.resume(tmp_path / "o.pt")
    assert str(error.value).endswith(f"trained with model {other_spec}, but this run builds {spec}; pass the same "
                                     "model flags to resume")


def _schedule_lrs(steps, *args, **kwargs):
    optimizer = torch.optim.SGD(nn.Linear(1, 1).parameters(), lr=1.0)
    scheduler = cosine_with_warmup(optimizer, *args, **kwargs)
    values = []
    for _ in range(steps):
        values.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return values


def test_cosine_with_warmup_ends_at_one_percent_by_default_and_stays_there():
    values = _schedule_lrs(8, 1, 5)
    assert values[1] == pytest.approx(1.0) and values[5:] == pytest.approx([0.01] * 3)
    assert _schedule_lrs(4, 0, 1, min_lr_ratio=0.0) == pytest.approx([1.0, 0.0, 0.0, 0.0])  # a one-step decay
    assert _schedule_lrs(3, 2, 2, min_lr_ratio=0.0) == pytest.approx([0.5, 1.0, 1.0])  # warm-up only: no decay


def test_ema_of_a_bare_normalisation_layer_copies_its_running_statistics():
    norm = nn.BatchNorm2d(3).train()
    ema = EMA(norm, decay=0.9)
    for step in range(2):
        norm(torch.rand(2, 3, 4, 4) + step)
        ema.update()
        torch.testing.assert_close(ema.module.running_mean, norm.running_mean)


def test_training_state_saves_a_wrapped_second_network_as_its_plain_module(tmp_path):
    model, disc, train_step, disc_step, _ = _state_with_a_second_network(0, amp="none")
    state = TrainingState(model=model, train_step=train_step, config={"model": model_spec(model, {"width": 4})},
                          extra_modules={"disc": nn.DataParallel(disc)})
    state.save(tmp_path / "last.pt", step=1)
    assert set(load_checkpoint(tmp_path / "last.pt")["extra"]["modules"]["disc"]) == set(disc.state_dict())
    model2, disc2, train_step2, *_ = _state_with_a_second_network(1, amp="none")
    TrainingState(model=model2, train_step=train_step2, config={"model": model_spec(model2, {"width": 4})},
                  extra_modules={"disc": disc2}).resume(tmp_path / "last.pt")
    assert all(torch.equal(p, q) for p, q in zip(disc.parameters(), disc2.parameters()))


class EmbedNet(nn.Module):
    """A network whose input convolution sits where load_pretrained_expanding widens it by default."""

    def __init__(self, in_channels=3, width=4):
        super().__init__()
        self.patch_embed = nn.Module()
        self.patch_embed.proj = nn.Conv2d(in_channels, width, 3, padding=1)
        self.head = nn.Conv2d(width, 3, 1)


@pytest.mark.parametrize("zero_init", [True, False])
def test_load_pretrained_expanding_widens_the_input_convolution(tmp_path, capsys, zero_init):
    source, model = EmbedNet(3), EmbedNet(5)
    torch.save({"params": source.state_dict()}, tmp_path / "rgb.pth")
    fresh = model.patch_embed.proj.weight.detach().clone()
    assert load_pretrained_expanding(model, tmp_path / "rgb.pth", zero_init_extra_channels=zero_init) == ([], [])
    weight = model.patch_embed.proj.weight.detach()
    assert torch.equal(weight[:, :3], source.patch_embed.proj.weight.detach())
    assert torch.equal(weight[:, 3:], torch.zeros_like(weight[:, 3:]) if zero_init else fresh[:, 3:])
    assert torch.equal(model.head.weight, source.head.weight)
    init = "zeros" if zero_init else "random"
    assert capsys.readouterr().out == (f"pretrained {tmp_path / 'rgb.pth'}: patch_embed.proj.weight expanded from 3 "
                                       f"to 5 input channels ({init} for the extra ones)\n")


def test_load_pretrained_expanding_loads_a_fitting_file_silently_and_names_what_does_not_fit(tmp_path, capsys):
    source = EmbedNet(3)
    torch.save(source.state_dict(), tmp_path / "same.pth")
    model = EmbedNet(3)
    load_pretrained_expanding(model, tmp_path / "same.pth")
    assert torch.equal(model.patch_embed.proj.weight, source.patch_embed.proj.weight)
    assert capsys.readouterr().out == ""
    torch.save({"stem.weight": torch.zeros(4, 3, 3, 3)}, tmp_path / "stem.pth")
    wide = nn.Module()
    wide.stem = nn.Conv2d(5, 4, 3, bias=False)
    load_pretrained_expanding(wide, tmp_path / "stem.pth", key="stem.weight")
    assert wide.stem.weight.abs().sum() == 0  # widened under the key given, extra channels zero
    torch.save(EmbedNet(3, width=6).state_dict(), tmp_path / "wider.pth")
    with pytest.raises(CheckpointError, match=r"^--pretrained .*wider\.pth: weights in <dict> do not fit EmbedNet: "):
        load_pretrained_expanding(EmbedNet(5), tmp_path / "wider.pth")


def test_read_export_config_needs_the_export_config_next_to_the_file(tmp_path):
    weights = tmp_path / "model.safetensors"
    with pytest.raises(CheckpointError, match=r"model\.safetensors has no config\.json next to it: enhance needs the "
                                              r"config that export\.py writes \(architecture, input features, "
                                              r"preprocessing\)$"):
        read_export_config(weights)
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(CheckpointError, match=r"^cannot read .*config\.json: JSONDecodeError: "):
        read_export_config(weights)
    for config in ([1], {"format": "other", "model": {}}, {"format": EXPORT_FORMAT}):
        (tmp_path / "config.json").write_text(json.dumps(config))
        with pytest.raises(CheckpointError, match=r"config\.json is not an export config \(format rehdr-export-v1 "
                                                  r"with a 'model'\)$"):
            read_export_config(weights)


def test_load_exported_reads_the_weights_and_config_as_a_checkpoint(tmp_path):
    model = TinyNet()
    save_file(model.state_dict(), tmp_path / "model.safetensors")
    config = {"format": EXPORT_FORMAT, "model": model_spec(model, {"width": 4}), "step": 7}
    (tmp_path / "config.json").write_text(json.dumps(config))
    checkpoint = load_exported(tmp_path / "model.safetensors")
    assert checkpoint["format"] == EXPORT_FORMAT and checkpoint["config"] == config and checkpoint["step"] == 7
    assert checkpoint["model"].keys() == model.state_dict().keys()
    assert all(torch.equal(checkpoint["model"][k], v) for k, v in model.state_dict().items())
    del config["step"]
    (tmp_path / "config.json").write_text(json.dumps(config))
    assert load_exported(tmp_path / "model.safetensors")["step"] is None


def test_a_sharded_checkpoint_reads_back_as_full_model_weights(tmp_path):
    import torch.distributed.checkpoint as dcp
    model = TinyNet()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "torch.distributed is disabled": one process writes every shard
        dcp.save({"model": model.state_dict(), "optim": {"lr": torch.ones(2)}}, checkpoint_id=str(tmp_path / "shards"),
                 no_dist=True)
    weights = read_sharded_weights(tmp_path / "shards")
    assert weights.keys() == model.state_dict().keys()  # the model's entries only, without their prefix
    assert all(torch.equal(weights[k], v) for k, v in model.state_dict().items())
    torch.save({"step": 3, "sharded": "shards", "model": None}, tmp_path / "last.pt")
    checkpoint = load_checkpoint(tmp_path)
    assert all(torch.equal(checkpoint["model"][k], v) for k, v in model.state_dict().items())
    assert load_checkpoint(tmp_path / "last.pt", assemble_shards=False)["model"] is None
    with pytest.raises(CheckpointError, match=r"^sharded checkpoint folder not found or incomplete: .*missing$"):
        read_sharded_weights(tmp_path / "missing")


def test_a_sharded_checkpoint_that_carries_its_model_is_not_reassembled(tmp_path):
    weights = TinyNet().state_dict()
    torch.save({"step": 3, "sharded": "no_such_folder", "model": weights}, tmp_path / "last.pt")
    checkpoint = load_checkpoint(tmp_path / "last.pt")  # reading the shards would fail: the folder is absent
    assert all(torch.equal(checkpoint["model"][k], v) for k, v in weights.items())


def test_a_truncated_safetensors_file_gives_one_line_naming_it(tmp_path):
    save_file(TinyNet().state_dict(), tmp_path / "model.safetensors")
    data = (tmp_path / "model.safetensors").read_bytes()
    (tmp_path / "cut.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=rf"^cannot read checkpoint {re.escape(str(tmp_path / 'cut.safetensors'))}: "
                                              r"SafetensorError: [^\n]+$"):
        load_checkpoint(tmp_path / "cut.safetensors")
    assert load_checkpoint(tmp_path / "model.safetensors").keys() == TinyNet().state_dict().keys()


def test_unwrap_model_sees_through_torch_compile_and_data_parallel():
    model = TinyNet()
    assert unwrap_model(torch.compile(model)) is model  # compiles nothing until called
    assert unwrap_model(torch.compile(nn.DataParallel(model))) is model
    assert unwrap_model(nn.DataParallel(torch.compile(model))) is model


def test_expanding_pretrained_weights_says_from_how_many_channels_to_how_many(tmp_path, capsys):
    from models.restormer import Restormer
    kwargs = dict(dim=8, num_blocks=[1, 1, 1, 1], num_refinement_blocks=1, heads=[1, 1, 1, 1])
    torch.save({"params": Restormer(inp_channels=4, **kwargs).state_dict()}, tmp_path / "four.pth")
    load_pretrained_expanding(Restormer(inp_channels=6, **kwargs), tmp_path / "four.pth")
    assert capsys.readouterr().out.splitlines()[0] == (
        f"pretrained {tmp_path / 'four.pth'}: patch_embed.proj.weight expanded from 4 to 6 input channels "
        "(zeros for the extra ones)")


def pickle_of_two_classes(tmp_path, monkeypatch):
    """A checkpoint whose pickle names two classes of a module ``two_classes`` importable from tmp_path."""
    (tmp_path / "two_classes.py").write_text("class First:\n    pass\n\n\nclass Second:\n    pass\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "two_classes", raising=False)
    import two_classes
    path = tmp_path / "objects.pt"
    torch.save({"first": two_classes.First(), "second": two_classes.Second()}, path)
    return path


def test_a_refused_file_is_named_with_every_class_it_holds_and_how_to_convert_it(tmp_path, monkeypatch):
    path = pickle_of_two_classes(tmp_path, monkeypatch)
    with pytest.raises(CheckpointError, match=re.escape(
            f"refused to load {path}: it names two_classes.First, two_classes.Second, not plain weights data "
            f"(unpickling it could run code); if you trust the file, pass --trust-checkpoint (or set "
            f"REHDR_TRUST_CHECKPOINTS=1), or convert it once: python tools/convert_checkpoint.py {path} "
            f"{tmp_path / 'objects.safetensors'}") + "$"):
        load_checkpoint(path, trust=False)


def test_a_trusted_file_loads_in_full_with_a_warning_on_stderr(tmp_path, monkeypatch, capsys):
    path = pickle_of_two_classes(tmp_path, monkeypatch)
    loaded = load_checkpoint(path, trust=True)
    assert type(loaded["first"]).__name__ == "First" and type(loaded["second"]).__name__ == "Second"
    out, err = capsys.readouterr()
    assert out == "" and err == (f"warning: {path} holds two_classes.First, two_classes.Second: unpickled in full "
                                 "because checkpoints are trusted (--trust-checkpoint / REHDR_TRUST_CHECKPOINTS=1)\n")


def test_a_trusted_file_that_cannot_be_unpickled_gives_one_line_naming_it(tmp_path, monkeypatch):
    path = pickle_of_two_classes(tmp_path, monkeypatch)
    (tmp_path / "two_classes.py").unlink()
    monkeypatch.delitem(sys.modules, "two_classes")
    with pytest.raises(CheckpointError, match=re.escape(
            f"cannot read checkpoint {path}: ModuleNotFoundError: No module named 'two_classes'") + "$"):
        load_checkpoint(path, trust=True)


def test_sharded_weights_read_back_in_their_saved_dtype_without_warnings(tmp_path):
    import torch.distributed.checkpoint as dcp
    model = TinyNet().to(torch.bfloat16)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "torch.distributed is disabled": one process writes every shard
        dcp.save({"model": model.state_dict()}, checkpoint_id=str(tmp_path / "shards"), no_dist=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # reading in one process is the intent: nothing to warn about
        weights = read_sharded_weights(tmp_path / "shards")
    assert {name: tensor.dtype for name, tensor in weights.items()} == {
        name: tensor.dtype for name, tensor in model.state_dict().items()}
    assert weights["body.0.weight"].dtype == torch.bfloat16
    assert all(torch.equal(weights[k], v) for k, v in model.state_dict().items())


def test_rng_state_saves_and_restores_the_cuda_generators_only_where_cuda_is(monkeypatch):
    restored = []
    monkeypatch.setattr(torch.cuda, "get_rng_state_all", lambda: ["cuda-state"])
    monkeypatch.setattr(torch.cuda, "set_rng_state_all", restored.append)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    state = rng_state()
    assert state["cuda"] == ["cuda-state"]
    set_rng_state(state)
    assert restored == [["cuda-state"]]
    set_rng_state({key: value for key, value in state.items() if key != "cuda"})  # written on a CPU machine
    assert restored == [["cuda-state"]]
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert "cuda" not in rng_state()
    set_rng_state(state)  # a GPU run's checkpoint resumed on a CPU machine
    assert restored == [["cuda-state"]]


def test_saved_checkpoints_carry_the_format_tag(tmp_path):
    model = TinyNet()
    save_checkpoint(tmp_path / "c.pt", step=1, model=model, config={})
    assert load_checkpoint(tmp_path / "c.pt")["format"] == "rehdr-checkpoint-v1"


def test_extract_state_dict_prefers_ema_weights_by_default_and_refuses_a_non_dict():
    plain, ema = {"w": torch.zeros(1)}, {"w": torch.ones(1)}
    assert extract_state_dict({"params": plain, "params_ema": ema})["w"].item() == 1.0
    assert extract_state_dict({"params": plain, "params_ema": ema}, prefer_ema=False)["w"].item() == 0.0
    with pytest.raises(CheckpointError, match="^expected a dict of weights, got list$"):
        extract_state_dict([plain])


def test_read_errors_give_the_unpickler_reason_or_the_first_line_of_the_error():
    weights_only = RuntimeError("Weights only load failed. Advice.\n WeightsUnpickler error:  Unsupported operand 80\n"
                                "Check the documentation")
    assert str(_read_error("a.pt", weights_only)) == "cannot read checkpoint a.pt: RuntimeError: Unsupported operand 80"
    assert str(_read_error("a.pt", EOFError(" Ran out of input\nsecond line"))) == ("cannot read checkpoint a.pt: "
                                                                                    "EOFError: Ran out of input")
    assert str(_read_error("a.pt", EOFError())) == "cannot read checkpoint a.pt: EOFError: "


def test_refused_globals_names_what_a_file_would_import(tmp_path):
    torch.save({"run": os.system, "array": np.zeros(2), "encode": json.dumps}, tmp_path / "code.pt")
    names = refused_globals(tmp_path / "code.pt", Exception("no name here"))  # numpy's array is allowed
    assert names == f"json.dumps, {os.system.__module__}.system"
    (tmp_path / "legacy.pt").write_bytes(b"not a zip file")
    assert refused_globals(tmp_path / "legacy.pt", Exception("Unsupported global: GLOBAL posix.system was")) == (
        "posix.system")
    assert refused_globals(tmp_path / "legacy.pt", Exception("expected a tensor but got <class 'numpy.thing'>")) == (
        "numpy.thing")
    assert refused_globals(tmp_path / "legacy.pt", Exception("nothing named")) is None


def test_extract_state_dict_without_ema_preference_skips_both_ema_keys_and_names_the_keys_it_knows():
    plain, ema = {"w": torch.zeros(1)}, {"w": torch.ones(1)}
    assert extract_state_dict({"ema": ema, "model": plain}, prefer_ema=False)["w"].item() == 0.0
    assert extract_state_dict({"ema": ema, "model": plain})["w"].item() == 1.0
    with pytest.raises(CheckpointError, match="^no state_dict found: expected one of the keys params_ema, params, "
                                              "ema, model, state_dict or a bare state_dict$"):
        extract_state_dict({"epoch": 3})


class RenamedNet(nn.Module):
    """A model published under an older key naming (``old.*``) as well as the current one (``new.*``)."""
    checkpoint_key_renames = ((r"^gone\.", "nowhere."), (r"^old\.", "new."))

    def __init__(self):
        super().__init__()
        self.new = nn.Linear(2, 2)


def test_legacy_key_names_are_mapped_to_the_current_ones(capsys):
    source = nn.Module()
    source.old = nn.Linear(2, 2)
    legacy = dict(source.state_dict(), **{"gone.x": torch.zeros(1)})
    renamed_state, renamed = rename_legacy_keys(legacy, RenamedNet())
    assert renamed == [("old.weight", "new.weight"), ("old.bias", "new.bias")]
    assert set(renamed_state) == {"new.weight", "new.bias", "gone.x"}  # a rename that finds no key leaves it
    assert rename_legacy_keys(legacy, TinyNet()) == (legacy, [])  # a class without renames
    model = RenamedNet()
    load_pretrained(model, source.state_dict())
    assert torch.equal(model.new.weight, source.old.weight)
    assert capsys.readouterr().out == ("load_pretrained(<dict>): 2 keys of an older RenamedNet naming mapped to the "
                                       "current one (e.g. old.weight -> new.weight)\n")


def test_non_strict_loading_prints_what_did_not_fit_unless_quiet(capsys):
    model = nn.Linear(2, 2)
    weights = {"weight": torch.ones(2, 2), "extra": torch.zeros(1)}
    assert load_pretrained(model, weights, strict=False) == (["bias"], ["extra"])
    assert torch.equal(model.weight, torch.ones(2, 2))
    assert capsys.readouterr().out == "load_pretrained(<dict>): 1 missing (e.g. bias); 1 unexpected (e.g. extra)\n"
    load_pretrained(model, weights, strict=False, verbose=False)
    assert capsys.readouterr().out == ""


def test_load_pretrained_restormer_reads_a_file_into_both_copies_and_names_what_does_not_fit(tmp_path):
    from models.restormer import Restormer
    from models.zero_conv import ZeroConvRestormer
    kwargs = dict(dim=8, num_blocks=[1, 1, 1, 1], num_refinement_blocks=1, heads=[1, 2, 1, 2])
    restormer = Restormer(**kwargs)
    torch.save({"params": restormer.state_dict()}, tmp_path / "restormer.pth")
    model = ZeroConvRestormer(**kwargs)
    load_pretrained_restormer(nn.DataParallel(model), tmp_path / "restormer.pth")
    assert torch.equal(model.locked.patch_embed.proj.weight, restormer.patch_embed.proj.weight)
    assert torch.equal(model.control.patch_embed.proj.weight, restormer.patch_embed.proj.weight)
    torch.save({"params": Restormer(**dict(kwargs, dim=16)).state_dict()}, tmp_path / "wider.pth")
    with pytest.raises(CheckpointError, match=r"^weights in .*wider\.pth do not fit Restormer: .*shape mismatch"):
        load_pretrained_restormer(ZeroConvRestormer(**kwargs), tmp_path / "wider.pth")


def test_load_pretrained_restormer_takes_an_already_loaded_checkpoint_dict():
    from models.restormer import Restormer
    from models.zero_conv import ZeroConvRestormer
    kwargs = dict(dim=8, num_blocks=[1, 1, 1, 1], num_refinement_blocks=1, heads=[1, 1, 1, 1])
    restormer = Restormer(**kwargs)
    model = ZeroConvRestormer(**kwargs)
    load_pretrained_restormer(model, {"params": restormer.state_dict()})
    assert torch.equal(model.locked.output.weight, restormer.output.weight)
    assert torch.equal(model.control.patch_embed.proj.weight, restormer.patch_embed.proj.weight)


def test_load_pretrained_takes_the_plain_weights_when_told_not_to_prefer_ema():
    model = nn.Linear(2, 2, bias=False)
    load_pretrained(model, {"params": {"weight": torch.zeros(2, 2)}, "params_ema": {"weight": torch.ones(2, 2)}},
                    prefer_ema=False)
    assert torch.equal(model.weight, torch.zeros(2, 2))


def test_strict_loading_names_a_few_of_each_kind_of_misfit():
    model = nn.Sequential(*[nn.Linear(2, 2) for _ in range(3)])
    weights = {"0.weight": torch.zeros(3, 2), "0.bias": torch.zeros(2), **{f"x{i}": torch.zeros(1) for i in range(4)}}
    with pytest.raises(CheckpointError) as error:
        load_pretrained(model, weights)
    assert str(error.value) == ("weights in <dict> do not fit Sequential: 4 missing (e.g. 1.weight, 1.bias, 2.weight); "
                                "4 unexpected (e.g. x0, x1, x2); 1 shape mismatch (e.g. 0.weight (3, 2) vs model (2, 2))")


def test_a_folder_holding_an_export_loads_its_weights(tmp_path):
    model = TinyNet()
    save_file(model.state_dict(), tmp_path / "model.safetensors")
    save_checkpoint(tmp_path / "last.pt", step=1, model=TinyNet(), config={})
    loaded = load_checkpoint(tmp_path)
    assert all(torch.equal(loaded[k], v) for k, v in model.state_dict().items())
