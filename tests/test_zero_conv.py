"""ZeroConvRestormer: exactly the locked model at initialisation, gradients only into the trainable copy."""
import pytest
import torch

from models.restormer import Restormer
from models.zero_conv import ZeroConvRestormer
from utils.checkpoint import build_model, load_pretrained_restormer, model_spec

KWARGS = dict(dim=8, num_blocks=[1, 1, 1, 1], num_refinement_blocks=1, heads=[1, 2, 1, 2])


def pretrained_restormer(seed=0):
    torch.manual_seed(seed)
    return Restormer(**KWARGS).eval()


def test_output_is_exactly_the_locked_models_at_initialisation():
    restormer = pretrained_restormer()
    model = ZeroConvRestormer(**KWARGS)
    load_pretrained_restormer(model, {"params": restormer.state_dict()})
    image = torch.rand(2, 3, 20, 28)  # not a multiple of 8: padded and cropped like Restormer
    with torch.no_grad():
        expected = restormer(image)
        assert torch.equal(model.eval()(image), expected)
        assert torch.equal(model.train()(image), expected)
    # both copies hold the pretrained weights; the zero convolutions are zero
    state = model.state_dict()
    for name, value in restormer.state_dict().items():
        assert torch.equal(state[f"locked.{name}"], value)
        if f"control.{name}" in state:
            assert torch.equal(state[f"control.{name}"], value)
    assert {name.split(".")[0] for name in state} == {"locked", "control", "zero_convs"}
    assert all(torch.count_nonzero(p) == 0 for p in model.zero_convs.parameters())


def test_only_the_trainable_copy_learns_and_gradients_reach_all_of_it():
    model = ZeroConvRestormer(**KWARGS)
    load_pretrained_restormer(model, {"params": pretrained_restormer().state_dict()})
    locked_before = {name: value.clone() for name, value in model.locked.state_dict().items()}
    trainable = [p for p in model.parameters() if p.requires_grad]
    assert not any(p.requires_grad for p in model.locked.parameters())
    assert len(trainable) == len(list(model.control.parameters())) + len(list(model.zero_convs.parameters()))
    optimizer = torch.optim.AdamW(trainable, lr=1e-2)
    image, target = torch.rand(2, 3, 16, 16), torch.rand(2, 3, 16, 16)
    for step in range(2):
        loss = (model(image) - target).abs().mean()
        loss.backward()
        if step == 0:
            # ControlNet's start: only the zero convolutions get a gradient (the copy's path is multiplied by 0)
            assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.zero_convs.parameters())
        else:
            assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in trainable)
        assert all(p.grad is None for p in model.locked.parameters())
        optimizer.step()
        optimizer.zero_grad()
    assert all(torch.equal(value, locked_before[name]) for name, value in model.locked.state_dict().items())


def test_rebuilds_from_its_model_spec_and_checkpoints_and_grad_checkpointing_matches():
    model = ZeroConvRestormer(**KWARGS)
    with torch.no_grad():
        for conv in model.zero_convs:
            conv.weight.normal_(std=0.1)
    rebuilt = build_model(model_spec(model, KWARGS))
    rebuilt.load_state_dict(model.state_dict())
    image = torch.rand(1, 3, 16, 24)
    with torch.no_grad():
        assert torch.equal(rebuilt(image), model(image))
    checkpointed = ZeroConvRestormer(**KWARGS, grad_checkpoint=True).train()
    checkpointed.load_state_dict(model.state_dict())
    torch.testing.assert_close(checkpointed(image), model.train()(image))


def test_bad_input_and_weights_raise_one_line_errors():
    model = ZeroConvRestormer(**KWARGS)
    with pytest.raises(ValueError, match=r"expects input of shape \(N, 3, H, W\)"):
        model(torch.rand(1, 4, 16, 16))
    with pytest.raises(ValueError, match="do not fit Restormer"):
        load_pretrained_restormer(model, {"params": Restormer(**{**KWARGS, "dim": 16}).state_dict()})
    with pytest.raises(ValueError, match="dual_pixel_task"):
        ZeroConvRestormer(**KWARGS, dual_pixel_task=True)
