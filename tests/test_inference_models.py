"""utils/inference.py, the model side: where a loaded network lands (device, amp, tiling), which weights
it uses and how it says so (describe), strict loading, depth input, the reduced-size edit, ensembles,
the ONNX executor, and the frozen backbone of a refiner (official Restormer weights included)."""
import hashlib
import re
import sys

import numpy as np
import pytest
import torch

from tests.conftest import LocalConvNet, save_model_checkpoint
from utils.checkpoint import CheckpointError, load_checkpoint, load_exported, model_spec

TINY_RESTORMER = dict(dim=8, num_blocks=[1, 1, 1, 1], num_refinement_blocks=1, heads=[1, 1, 1, 1])
LOCAL_CONV_PARAMETERS = "1,027"  # LocalConvNet(): 3*8*9+8 + 8*8*9+8 + 8*3*9+3


class AddConstant(torch.nn.Module):
    """``x + offset`` (an edit of known size); ``size_multiple`` as window networks declare it."""

    def __init__(self, offset: float = 0.0, size_multiple: int = None):
        super().__init__()
        self.offset = torch.nn.Parameter(torch.tensor(float(offset)))
        if size_multiple is not None:
            self.size_multiple = size_multiple
        self.shapes = []

    def forward(self, x):
        self.shapes.append(tuple(x.shape[-2:]))
        return x[:, :3] + self.offset


class Affine(torch.nn.Module):
    """``3 x - 1``: outputs well outside [0, 1] on both sides."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 3, 1)
        with torch.no_grad():
            self.conv.weight.copy_(3 * torch.eye(3).view(3, 3, 1, 1))
            self.conv.bias.fill_(-1.0)

    def forward(self, x):
        return self.conv(x)


class FixedOutput:
    """An ensemble member (the MODEL_KINDS contract) whose prediction is a given tensor."""

    num_parameters = 0

    def __init__(self, output: torch.Tensor, name: str = "fixed"):
        self.output, self.name = output, name

    def predict(self, rgb, photo_cache=None):
        return self.output

    def describe(self):
        return self.name


def exactly(message: str) -> str:
    """A pattern for pytest.raises that matches the whole message and nothing more."""
    return f"^{re.escape(message)}$"


def photo(height=16, width=24, seed=0):
    return np.random.default_rng(seed).random((height, width, 3), dtype=np.float32)


def network(model=None, config=None, source="in memory", device="cpu", **kwargs):
    from utils.inference import NetworkModel, Tiling
    kwargs.setdefault("tiling", Tiling(tile=0))
    return NetworkModel(LocalConvNet() if model is None else model, config or {}, source, device, **kwargs)


# ----------------------------------------------------------------- NetworkModel

def test_network_model_and_its_input_land_on_the_requested_device():
    member = network(device="meta")
    assert member.device == torch.device("meta")
    assert all(p.device.type == "meta" for p in member.model.parameters())
    inputs = member.network_input(photo(), {})
    assert inputs.device.type == "meta" and inputs.shape == (1, 3, 16, 24)


def test_unknown_amp_is_refused_naming_the_choices():
    with pytest.raises(ValueError, match=exactly("--amp must be one of none, bf16, fp16, got 'fp8'")):
        network(amp="fp8")


def test_describe_names_class_parameters_weights_and_step():
    assert network().describe() == f"LocalConvNet ({LOCAL_CONV_PARAMETERS} parameters, weights) from in memory"
    assert (network(source="runs/a/best.pt", used_ema=True, step=0).describe()
            == f"LocalConvNet ({LOCAL_CONV_PARAMETERS} parameters, EMA weights, step 0) from runs/a/best.pt")


def test_network_input_is_padded_to_the_lcm_of_8_and_the_model_window():
    from utils.inference import Tiling
    plain = network(AddConstant())
    plain.predict(photo(20, 27))
    assert plain.model.shapes == [(24, 32)]
    windowed = network(AddConstant(size_multiple=12))
    output = windowed.predict(photo(20, 27))
    assert windowed.model.shapes == [(24, 48)] and output.shape == (1, 3, 20, 27)
    with pytest.raises(ValueError, match=exactly("--tile 32 must be a multiple of 24 for AddConstant "
                                                   "(its attention windows)")):
        network(AddConstant(size_multiple=12), tiling=Tiling(tile=32, overlap=8))


def test_tiles_run_under_bf16_autocast_and_come_back_float32_in_range():
    torch.manual_seed(0)
    model = LocalConvNet()
    tiles = torch.rand(2, 3, 16, 16)
    exact = network(model).run_tiles(tiles)
    mixed = network(model, amp="bf16").run_tiles(tiles)
    assert mixed.dtype == torch.float32 and 0 <= mixed.min() and mixed.max() <= 1
    difference = (mixed - exact).abs().max().item()
    assert 0 < difference < 0.05  # bf16 rounding: visible, small


def checkpoint_dict(weights: dict, **extra):
    return {"config": {"model": model_spec(LocalConvNet(), {})}, **weights, **extra}


def test_strict_loading_refuses_a_mismatched_checkpoint():
    from utils.inference import NetworkModel, Tiling
    state = LocalConvNet().state_dict()
    stray = checkpoint_dict({"model": dict(state, **{"extra.weight": torch.zeros(1)})})
    with pytest.raises(CheckpointError, match=r"do not fit LocalConvNet: 1 unexpected \(e\.g\. extra\.weight\)"):
        NetworkModel.from_checkpoint(stray, "stray.pt", "cpu", "none", Tiling(tile=0))
    del state["body.0.bias"]
    with pytest.raises(CheckpointError, match=r"1 missing \(e\.g\. body\.0\.bias\)"):
        NetworkModel.from_checkpoint(checkpoint_dict({"model": state}), "short.pt", "cpu", "none", Tiling(tile=0))


def test_ema_weights_are_used_and_reported_for_ours_basicsr_and_exports(tmp_path):
    from utils.export import export_safetensors
    from utils.inference import NetworkModel, Tiling
    torch.manual_seed(0)
    raw, ema = LocalConvNet().state_dict(), LocalConvNet(identity=True).state_dict()
    image = photo()
    ours = load_checkpoint(save_model_checkpoint(tmp_path / "ours" / "best.pt", LocalConvNet(), {},
                                                 ema_model=LocalConvNet(identity=True)))
    basicsr = checkpoint_dict({"params": raw, "params_ema": ema}, step=3)
    export_safetensors(tmp_path / "ours" / "best.pt", tmp_path / "export")
    exported = load_exported(tmp_path / "export" / "model.safetensors")
    for checkpoint, step in ((ours, 7), (basicsr, 3), (exported, 7)):
        member = NetworkModel.from_checkpoint(checkpoint, "ckpt", "cpu", "none", Tiling(tile=0))
        assert member.describe() == (f"LocalConvNet ({LOCAL_CONV_PARAMETERS} parameters, EMA weights, step {step}) "
                                     "from ckpt")
        np.testing.assert_allclose(member.predict(image)[0].permute(1, 2, 0).numpy(), image, atol=1e-6)
    # without EMA weights: the raw ones, said so (an export too, whose format alone is no EMA)
    save_model_checkpoint(tmp_path / "raw" / "best.pt", LocalConvNet(), {})
    export_safetensors(tmp_path / "raw" / "best.pt", tmp_path / "raw_export")
    for checkpoint in (load_checkpoint(tmp_path / "raw" / "best.pt"), checkpoint_dict({"params": raw}, step=7),
                       load_exported(tmp_path / "raw_export" / "model.safetensors")):
        member = NetworkModel.from_checkpoint(checkpoint, "ckpt", "cpu", "none", Tiling(tile=0))
        assert member.describe() == f"LocalConvNet ({LOCAL_CONV_PARAMETERS} parameters, weights, step 7) from ckpt"


def test_from_checkpoint_lands_on_the_device_with_its_amp_and_tiling(tmp_path):
    from utils.inference import NetworkModel, Tiling
    checkpoint = load_checkpoint(save_model_checkpoint(tmp_path / "run" / "best.pt", LocalConvNet(), {}))
    tiling = Tiling(tile=64, overlap=16, batch_size=2)
    member = NetworkModel.from_checkpoint(checkpoint, "ckpt", "meta", "bf16", tiling)
    assert all(p.device.type == "meta" for p in member.model.parameters())
    assert member.amp == "bf16" and member.tiling is tiling


# ----------------------------------------------------------------- depth input

def save_tiny_dpt(folder, seed):
    from transformers import DPTForDepthEstimation

    from models.depth import tiny_dpt_config
    torch.manual_seed(seed)
    DPTForDepthEstimation(tiny_dpt_config(image_size=32)).save_pretrained(folder)
    return str(folder)


def test_depth_input_without_a_depth_model_is_refused_naming_the_checkpoint():
    member = network(LocalConvNet(inp_channels=4), {"input_features": ["depth"]}, source="runs/x/best.pt")
    with pytest.raises(CheckpointError, match=exactly(
            "runs/x/best.pt: input feature 'depth' needs config['depth_model'] (the MiDaS/DPT folder the run was "
            "trained with)")):
        member.predict(photo())


def test_depth_is_loaded_on_the_member_device_under_its_amp_and_shared_only_between_equal_pipelines(
        tmp_path, monkeypatch):
    import utils.features
    from models.depth import DepthEstimator
    from utils.inference import Enhancer
    first, second = save_tiny_dpt(tmp_path / "dpt_a", 0), save_tiny_dpt(tmp_path / "dpt_b", 1)
    loads, calls = [], []
    real_load, real_call = utils.features.load_depth_model, DepthEstimator.__call__

    def recording_load(name, device="not given", autocast_dtype="not given"):
        loads.append((name, device, autocast_dtype))
        return real_load(name, "cpu", autocast_dtype=None if autocast_dtype == "not given" else autocast_dtype)

    monkeypatch.setattr(utils.features, "load_depth_model", recording_load)
    monkeypatch.setattr(DepthEstimator, "__call__",
                        lambda self, rgb: calls.append(self.model_key) or real_call(self, rgb))
    grayworld = [{"name": "grayworld", "strength": 1.0, "max_gain": 2.0}]

    def member(depth_model, preprocess=None):
        config = {"input_features": ["depth"], "depth_model": depth_model, "preprocess": preprocess}
        return network(LocalConvNet(inp_channels=4), config, amp="bf16")

    members = [member(first), member(first, grayworld), member(second), member(first)]
    Enhancer(members, "cpu").enhance(photo(24, 32))
    assert loads[0] == (first, torch.device("cpu"), torch.bfloat16)
    # one depth per (depth model, preprocessing): the last member reuses the first's
    assert len(calls) == 3 and len(set(calls)) == 2


# ----------------------------------------------------------------- the edit made at a reduced size

@pytest.mark.parametrize("offset", [0.25, -0.25])
def test_reduced_size_edit_is_applied_at_full_size_clipped_to_unit_range(offset):
    from utils.inference import Enhancer
    # a 1-px checkerboard of 0.1 / 0.9: 0.5 everywhere at half size, so the network sees no clipping,
    # while the full-size detail plus the edit leaves [0, 1] on one side
    board = np.where((np.arange(32)[:, None] + np.arange(32)[None, :]) % 2, 0.9, 0.1).astype(np.float32)
    image = np.repeat(board[..., None], 3, axis=2)
    member = network(AddConstant(offset), {"preprocess": [{"name": "resize", "max_side": 16}]})
    output = Enhancer([member], "cpu").predict(image)
    assert member.model.shapes == [(16, 16)] and output.shape == (1, 3, 32, 32) and output.dtype == torch.float32
    np.testing.assert_allclose(output[0].permute(1, 2, 0).numpy(), np.clip(image + offset, 0, 1), atol=1e-6)


# ----------------------------------------------------------------- Enhancer

def test_ensemble_describe_lists_every_member_and_one_member_is_itself():
    from utils.inference import Enhancer
    a, b = network(source="a.pt"), network(source="b.pt", used_ema=True, step=5)
    assert Enhancer([a], "cpu").describe() == a.describe()
    assert Enhancer([a, b], "cpu").describe() == (
        f"ensemble of 2: LocalConvNet ({LOCAL_CONV_PARAMETERS} parameters, weights) from a.pt; "
        f"LocalConvNet ({LOCAL_CONV_PARAMETERS} parameters, EMA weights, step 5) from b.pt")


def test_ensemble_of_two_averages_and_a_single_member_is_returned_as_is():
    from utils.inference import Enhancer
    low, high = torch.full((1, 3, 4, 4), 0.2), torch.full((1, 3, 4, 4), 0.6)
    image = photo(4, 4)
    averaged = Enhancer([FixedOutput(low), FixedOutput(high)], "cpu").predict(image)
    torch.testing.assert_close(averaged, torch.full((1, 3, 4, 4), 0.4))
    assert Enhancer([FixedOutput(low)], "cpu").predict(image) is low


@pytest.mark.parametrize("dtype", [np.float64, np.float16])
def test_predict_takes_other_float_dtypes_as_float32(dtype):
    from utils.inference import Enhancer
    torch.manual_seed(0)
    enhancer = Enhancer([network(LocalConvNet())], "cpu")
    image = photo()
    expected = enhancer.predict(image.astype(dtype).astype(np.float32))
    output = enhancer.predict(image.astype(dtype))
    assert output.dtype == torch.float32
    torch.testing.assert_close(output, expected)


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
def test_predict_refuses_an_integer_photo_that_would_come_out_white(dtype):
    from utils.inference import Enhancer
    enhancer = Enhancer([network(LocalConvNet())], "cpu")
    with pytest.raises(ValueError, match=rf"^expected a float photo in \[0, 1\], got {np.dtype(dtype).name} "
                                         r"\(data.io.read_image gives one\)$"):
        enhancer.predict((photo() * 255).astype(dtype))


# ----------------------------------------------------------------- OnnxModel

def onnx_export(tmp_path, model=None, ema=True, name="deploy"):
    from utils.export import export_onnx
    model = LocalConvNet() if model is None else model
    run = tmp_path / f"{name}_run" / "best.pt"
    save_model_checkpoint(run, model, {}, ema_model=model if ema else None)
    (path, _), _ = export_onnx(run, tmp_path / name)
    return path


def test_onnx_member_describe_tiling_amp_and_compile(tmp_path):
    from utils.inference import OnnxModel, Tiling
    path = onnx_export(tmp_path)
    tiling = Tiling(tile=48, overlap=16)
    member = OnnxModel.from_file(path, "cpu", "bf16", tiling)
    assert member.describe() == (f"LocalConvNet (ONNX on onnxruntime CPUExecutionProvider, fp32, EMA weights, "
                                 f"step 7) from {path}")
    assert member.tiling is tiling and member.amp == "none" and member.size_multiple == 8  # the graph is fp32
    with pytest.raises(ValueError, match=exactly(f"--compile: {path} is an ONNX graph run by onnxruntime, "
                                                   "which is not compiled")):
        member.compile()
    raw = onnx_export(tmp_path, ema=False, name="raw")
    assert OnnxModel(raw, "cpu").describe() == (f"LocalConvNet (ONNX on onnxruntime CPUExecutionProvider, fp32, "
                                                f"weights, step 7) from {raw}")


def test_onnx_window_multiple_comes_from_the_export(tmp_path):
    import json

    import onnx

    from utils.inference import OnnxModel, Tiling
    path = onnx_export(tmp_path)
    graph = onnx.load(str(path))
    entry = next(e for e in graph.metadata_props if e.key == "rehdr_config")
    entry.value = json.dumps(dict(json.loads(entry.value), size_multiple=16))
    onnx.save(graph, str(path))
    assert OnnxModel(path, "cpu", Tiling(tile=32, overlap=8)).size_multiple == 16
    with pytest.raises(ValueError, match=exactly("--tile 24 must be a multiple of 16 for LocalConvNet "
                                                   "(its attention windows)")):
        OnnxModel(path, "cpu", Tiling(tile=24, overlap=8))


def test_onnx_session_asks_for_the_cuda_provider_of_the_device(tmp_path, monkeypatch):
    import onnxruntime

    from utils.inference import OnnxModel
    path = onnx_export(tmp_path)
    asked = []
    real_session = onnxruntime.InferenceSession

    def recording_session(model_path, providers):
        asked.append(providers)
        return real_session(model_path, providers=["CPUExecutionProvider"])

    monkeypatch.setattr(onnxruntime, "InferenceSession", recording_session)
    monkeypatch.setattr(onnxruntime, "get_available_providers",
                        lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"])
    for device in ("cuda:1", "cuda", "cpu"):
        OnnxModel(path, device)
    monkeypatch.setattr(onnxruntime, "get_available_providers", lambda: ["CPUExecutionProvider"])
    OnnxModel(path, "cuda:1")
    assert asked == [[("CUDAExecutionProvider", {"device_id": 1}), "CPUExecutionProvider"],
                     [("CUDAExecutionProvider", {"device_id": 0}), "CPUExecutionProvider"],
                     ["CPUExecutionProvider"], ["CPUExecutionProvider"]]


def test_onnx_config_comes_from_the_graph_else_from_config_json(tmp_path):
    import onnx

    from utils.inference import OnnxModel
    path = onnx_export(tmp_path)
    config_json = path.with_name("config.json")
    saved = config_json.read_text()
    config_json.unlink()
    assert OnnxModel(path, "cpu").step == 7  # the config embedded in the graph
    graph = onnx.load(str(path))
    del graph.metadata_props[:]
    onnx.save(graph, str(path))
    with pytest.raises(CheckpointError, match="has no config.json next to it"):
        OnnxModel(path, "cpu")
    config_json.write_text(saved)
    assert OnnxModel(path, "cpu").describe().startswith("LocalConvNet (ONNX on onnxruntime CPUExecutionProvider")


def test_onnx_member_of_a_run_without_a_step_names_none(tmp_path):
    import json

    import onnx

    from utils.inference import OnnxModel
    path = onnx_export(tmp_path)
    graph = onnx.load(str(path))
    for entry in graph.metadata_props:
        config = json.loads(entry.value)
        if isinstance(config, dict) and config.get("step") == 7:
            entry.value = json.dumps({**config, "step": None})
    onnx.save(graph, str(path))
    assert OnnxModel(path, "cpu").describe() == (f"LocalConvNet (ONNX on onnxruntime CPUExecutionProvider, fp32, "
                                                 f"EMA weights) from {path}")


def test_onnx_export_without_a_recorded_window_multiple_tiles_at_multiples_of_8(tmp_path):
    import json

    import onnx

    from utils.inference import OnnxModel
    path = onnx_export(tmp_path)
    graph = onnx.load(str(path))
    for entry in graph.metadata_props:
        config = json.loads(entry.value)
        if isinstance(config, dict) and "size_multiple" in config:
            entry.value = json.dumps({key: value for key, value in config.items() if key != "size_multiple"})
    onnx.save(graph, str(path))
    assert OnnxModel(path, "cpu").size_multiple == 8


def test_onnx_tiles_are_clamped_to_unit_range(tmp_path):
    from utils.inference import OnnxModel
    member = OnnxModel(onnx_export(tmp_path, Affine()), "cpu")
    tiles = torch.linspace(0, 1, 2 * 3 * 8 * 8, dtype=torch.float64).view(2, 3, 8, 8)
    output = member.run_tiles(tiles)
    assert output.dtype == torch.float32 and output.min() == 0 and output.max() == 1
    torch.testing.assert_close(output, (3 * tiles.float() - 1).clamp(0, 1), atol=1e-6, rtol=0)


def test_onnx_errors_are_one_line(tmp_path, monkeypatch):
    from utils.inference import OnnxModel
    bad = tmp_path / "model.onnx"
    bad.write_bytes(b"not a graph")
    with pytest.raises(CheckpointError, match=rf"^cannot read ONNX model {re.escape(str(bad))}: InvalidProtobuf: "
                                              r"\[ONNXRuntimeError\][^\n]*$"):
        OnnxModel(bad, "cpu")
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # as if not installed
    with pytest.raises(ImportError, match=exactly("running a .onnx model needs onnxruntime: "
                                                    "pip install -r requirements-extras.txt")):
        OnnxModel(bad, "cpu")


# ----------------------------------------------------------------- frozen backbone, refiner

def test_file_sha256_hashes_every_chunk(tmp_path):
    from utils.inference import file_sha256
    data = np.random.default_rng(0).bytes((5 << 20) // 2)  # 2.5 MiB: three 1 MiB reads
    (tmp_path / "big").write_bytes(data)
    (tmp_path / "empty").write_bytes(b"")
    assert file_sha256(tmp_path / "big") == hashlib.sha256(data).hexdigest()
    assert file_sha256(tmp_path / "empty") == hashlib.sha256(b"").hexdigest()


def test_freeze_leaves_nothing_trainable_and_stays_in_eval():
    from utils.inference import freeze
    model = LocalConvNet().train()
    assert freeze(model) is model
    assert not any(p.requires_grad for p in model.parameters())
    assert model.train() is model and model.train(True) is model
    assert not any(m.training for m in model.modules())


@pytest.mark.parametrize("kwargs", [
    dict(inp_channels=6, out_channels=3, dim=8, num_blocks=[2, 1, 1, 3], num_refinement_blocks=2, heads=[2, 1, 2, 4],
         ffn_expansion_factor=2.0, bias=True, LayerNorm_type="WithBias", dual_pixel_task=True),
    dict(inp_channels=4, out_channels=2, dim=16, num_blocks=[1, 1, 2, 1], num_refinement_blocks=0, heads=[1, 2, 1, 2],
         ffn_expansion_factor=2.66, bias=False, LayerNorm_type="BiasFree", dual_pixel_task=False),
], ids=["dual_pixel_bias", "bias_free_no_refinement"])
def test_official_restormer_kwargs_infers_every_constructor_argument(kwargs):
    from models.restormer import Restormer
    from utils.inference import official_restormer_kwargs
    assert official_restormer_kwargs(Restormer(**kwargs).state_dict(), "x.pth") == kwargs


@pytest.mark.parametrize("missing", ["patch_embed.proj.weight", "output.weight"])
def test_official_restormer_kwargs_refuses_other_weights(missing):
    from models.restormer import Restormer
    from utils.inference import official_restormer_kwargs
    state = Restormer(**TINY_RESTORMER).state_dict()
    del state[missing]
    with pytest.raises(CheckpointError, match=exactly(
            "net.pth is not a Restormer-family checkpoint: expected Restormer weights (patch_embed.proj.weight ... "
            "output.weight) or a run of this codebase")):
        official_restormer_kwargs(state, "net.pth")


def official_file(tmp_path, ema=True, **extra):
    """An official-style Restormer .pth (BasicSR 'params' and, with ``ema``, different 'params_ema')."""
    from models.restormer import Restormer
    torch.manual_seed(0)
    raw, averaged = Restormer(**TINY_RESTORMER).state_dict(), Restormer(**TINY_RESTORMER).state_dict()
    path = tmp_path / "restormer.pth"
    torch.save({"params": dict(raw, **extra), **({"params_ema": averaged} if ema else {})}, path)
    return path, raw, averaged


def test_official_backbone_uses_its_ema_weights_on_the_device_with_amp_and_tiling(tmp_path):
    from utils.inference import Tiling, load_backbone, official_restormer_kwargs
    path, _, averaged = official_file(tmp_path)
    member, file, digest = load_backbone(path, "cpu")
    assert digest == hashlib.sha256(path.read_bytes()).hexdigest() and file == path
    assert all(torch.equal(member.model.state_dict()[k], v) for k, v in averaged.items())
    assert member.config == {"model": {"class": "models.restormer.Restormer",
                                       "kwargs": official_restormer_kwargs(averaged, path)}}
    assert member.describe().endswith(f"parameters, EMA weights) from {path}")
    tiling = Tiling(tile=64, overlap=16)
    on_meta, _, _ = load_backbone(path, "meta", "bf16", tiling)
    assert all(p.device.type == "meta" for p in on_meta.model.parameters())
    assert on_meta.amp == "bf16" and on_meta.tiling is tiling
    assert not any(p.requires_grad for p in on_meta.model.parameters())
    (tmp_path / "raw").mkdir()
    raw_path, _, _ = official_file(tmp_path / "raw", ema=False)
    assert load_backbone(raw_path, "cpu")[0].describe().endswith(f"parameters, weights) from {raw_path}")


def test_official_backbone_with_a_stray_key_is_refused(tmp_path):
    from utils.inference import load_backbone
    path, _, _ = official_file(tmp_path, ema=False, **{"extra.weight": torch.zeros(1)})
    with pytest.raises(CheckpointError, match=r"do not fit Restormer: 1 unexpected \(e\.g\. extra\.weight\)"):
        load_backbone(path, "cpu")


def restormer_run(tmp_path, **config):
    from models.restormer import Restormer
    torch.manual_seed(0)
    kwargs = dict(TINY_RESTORMER, **config.pop("kwargs", {}))
    return save_model_checkpoint(tmp_path / "backbone" / "best.pt", Restormer(**kwargs), kwargs, **config)


def test_run_backbone_lands_on_the_device_with_amp_and_tiling(tmp_path):
    from utils.inference import Tiling, load_backbone
    path = restormer_run(tmp_path)
    tiling = Tiling(tile=64, overlap=16)
    member, file, _ = load_backbone(path.parent, "meta", "bf16", tiling)
    assert file == path and member.source == str(path)
    assert all(p.device.type == "meta" for p in member.model.parameters())
    assert member.amp == "bf16" and member.tiling is tiling


def test_backbone_with_feature_channels_is_accepted(tmp_path):
    from utils.inference import load_backbone
    path = restormer_run(tmp_path, kwargs={"inp_channels": 5}, input_features=["edge", "saturation"])
    member, _, _ = load_backbone(path, "cpu")
    assert member.features == ["edge", "saturation"] and member.model.inp_channels == 5


def test_backbone_refusals_give_the_exact_line(tmp_path):
    from utils.inference import load_backbone
    path, _, _ = official_file(tmp_path)
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    assert load_backbone(path, "cpu", expected_sha256=digest)[2] == digest
    with pytest.raises(CheckpointError, match=exactly(
            f"backbone {path} changed since the refiner was trained (SHA-256 {digest[:12]}..., recorded "
            f"0123456789ab...): restore that file or retrain the refiner")):
        load_backbone(path, "cpu", expected_sha256="0123456789abcdef" * 4)
    with pytest.raises(CheckpointError, match=exactly(
            "--backbone is required: a Restormer run folder / .pt of this codebase, or an official Restormer .pth")):
        load_backbone(None, "cpu")
    conv = save_model_checkpoint(tmp_path / "conv.pt", LocalConvNet(), {})
    with pytest.raises(CheckpointError, match=exactly(
            f"backbone {conv} holds a tests.conftest.LocalConvNet, expected a Restormer-family model "
            "(models.restormer.Restormer or a subclass)")):
        load_backbone(conv, "cpu")
    four = restormer_run(tmp_path, kwargs={"inp_channels": 4})
    with pytest.raises(CheckpointError, match=exactly(
            f"backbone {four} takes 4 input channels but names no input features: expected an RGB (3-channel) "
            "Restormer")):
        load_backbone(four, "cpu")


def test_backbone_file_that_is_not_weights_is_refused_naming_what_it_holds(tmp_path):
    from utils.inference import load_backbone
    torch.save([torch.zeros(1)], tmp_path / "list.pth")
    with pytest.raises(CheckpointError, match=exactly("expected a dict of weights, got list")):
        load_backbone(tmp_path / "list.pth", "cpu")
    torch.save({"params": {"conv.weight": torch.zeros(1)}}, tmp_path / "other.pth")
    with pytest.raises(CheckpointError, match=exactly(
            f"{tmp_path / 'other.pth'} is not a Restormer-family checkpoint: expected Restormer weights "
            "(patch_embed.proj.weight ... output.weight) or a run of this codebase")):
        load_backbone(tmp_path / "other.pth", "cpu")


def refiner_checkpoint(tmp_path, backbone, sha256):
    from models.refiner import ColorRefiner
    torch.manual_seed(1)
    kwargs = dict(width=8, num_blocks=1)
    path = save_model_checkpoint(tmp_path / "refiner" / "best.pt", ColorRefiner(**kwargs), kwargs,
                                 refiner={"backbone": str(backbone), "backbone_sha256": sha256})
    return load_checkpoint(path)


def test_refiner_member_wires_the_frozen_backbone_and_the_refiner(tmp_path):
    from utils.inference import RefinerModel, Tiling
    backbone = restormer_run(tmp_path)
    checkpoint = refiner_checkpoint(tmp_path, backbone, hashlib.sha256(backbone.read_bytes()).hexdigest())
    tiling = Tiling(tile=64, overlap=16)
    member = RefinerModel.from_checkpoint(checkpoint, "refiner.pt", "meta", "bf16", tiling)
    for part in (member.backbone, member.refiner):
        assert all(p.device.type == "meta" for p in part.model.parameters())
        assert part.amp == "bf16" and part.tiling is tiling
    assert not any(p.requires_grad for p in member.backbone.model.parameters())
    assert re.fullmatch(rf"ColorRefiner \([\d,]+ parameters, weights, step 7\) from refiner\.pt on frozen "
                        rf"Restormer \([\d,]+ parameters, weights, step 7\) from {re.escape(str(backbone))}",
                        member.describe())


def test_refiner_member_refuses_a_changed_backbone_naming_the_refiner(tmp_path):
    from utils.inference import RefinerModel, Tiling
    backbone = restormer_run(tmp_path)
    checkpoint = refiner_checkpoint(tmp_path, backbone, "f" * 64)
    with pytest.raises(CheckpointError, match="^" + re.escape(f"refiner.pt: backbone {backbone} changed since "
                                                              "the refiner was trained")):
        RefinerModel.from_checkpoint(checkpoint, "refiner.pt", "cpu", "none", Tiling(tile=0))
