"""The inference command line of enhance.py / evaluate.py / report.py (utils/inference.py): every flag
reaches the enhancer with its type and value, the documented one-line errors, exports picked by their
suffix, and the output side (write_like, is_up_to_date)."""
import argparse
import os

import numpy as np
import pytest
import torch
from PIL import Image

import utils.checkpoint
from data.io import read_image, write_image
from tests.conftest import LocalConvNet, save_model_checkpoint
from utils import inference
from utils.checkpoint import TRUST_ENV, CheckpointError, load_checkpoint
from utils.inference import (DEFAULT_BATCH_SIZE, Enhancer, NetworkModel, OnnxModel, Tiling, add_inference_args,
                             enhancer_from_args, is_up_to_date, load_enhancer, load_member, resolve_checkpoints,
                             write_like)


def inference_parser(checkpoint="optional"):
    parser = argparse.ArgumentParser(prog="enhance.py")
    add_inference_args(parser, checkpoint=checkpoint)
    return parser


def gradient_photo(height=16, width=24):
    """An HxWx3 float32 photo in [0, 1] that no JPEG quality reproduces exactly."""
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    return np.stack([x / width, y / height, (x * y) % 7 / 7], axis=-1).astype(np.float32)


class DiffusionMember:
    """What a diffusion-pipeline loader of MODEL_KINDS returns: predict/describe/num_parameters, no compile."""

    num_parameters = 0

    def __init__(self, source, sampling):
        self.source, self.sampling = source, sampling

    def describe(self):
        return f"TinyDiffusion from {self.source}"

    def predict(self, rgb, photo_cache=None):
        return torch.from_numpy(rgb).permute(2, 0, 1)[None]


@pytest.fixture
def diffusion_checkpoint(tmp_path, monkeypatch):
    """RUN/best.pt whose config names a 'diffusion' model, loaded by a loader registered in MODEL_KINDS."""
    def load_diffusion(checkpoint, source, device, amp, tiling, sampling):
        return DiffusionMember(source, sampling)

    monkeypatch.setattr(inference, "MODEL_KINDS", (("diffusion", load_diffusion),) + inference.MODEL_KINDS)
    path = tmp_path / "diffusion_run" / "best.pt"
    path.parent.mkdir()
    torch.save({"config": {"diffusion": {"steps": 20, "seed": 0}}, "step": 3}, path)
    return path


# ------------------------------------------------------------------ flags -> enhancer

def test_tiling_and_amp_flags_reach_the_network_as_typed_values(conv_checkpoint):
    args = inference_parser("required").parse_args(
        ["--checkpoint", str(conv_checkpoint), "--device", "cpu", "--tile", "16", "--overlap", "4",
         "--batch-size", "3", "--amp", "bf16"])
    member = enhancer_from_args(args).members[0]
    assert (member.tiling.tile, member.tiling.overlap, member.tiling.batch_size) == (16, 4, 3)
    assert all(type(value) is int for value in (member.tiling.tile, member.tiling.overlap, member.tiling.batch_size))
    assert member.amp == "bf16"


def test_batch_size_defaults_to_one_tile_on_a_cpu(conv_checkpoint):
    args = inference_parser().parse_args(["--checkpoint", str(conv_checkpoint), "--device", "cpu"])
    assert args.batch_size is None and args.amp is None and args.device == "cpu"
    member = enhancer_from_args(args).members[0]
    assert member.tiling.batch_size == 1 and member.amp == "none"
    assert (member.tiling.tile, member.tiling.overlap) == (inference.DEFAULT_TILE, inference.DEFAULT_OVERLAP)


def test_batch_size_defaults_to_four_tiles_on_cuda(conv_checkpoint, monkeypatch):
    # No GPU here: the device choice says CUDA, and the loader records what it is asked for.
    requests = []
    monkeypatch.setattr(inference, "select_device", lambda name: torch.device("cuda"))
    monkeypatch.setattr(inference, "configure_backend", lambda device: None)
    monkeypatch.setattr(inference, "load_enhancer",
                        lambda paths, device, amp, **kwargs: requests.append((device, amp, kwargs)) or
                        load_enhancer(paths, "cpu", amp, **kwargs))
    args = inference_parser().parse_args(["--checkpoint", str(conv_checkpoint), "--amp", "none"])
    enhancer_from_args(args)
    (device, amp, kwargs), = requests
    assert device.type == "cuda" and amp == "none" and kwargs["batch_size"] == DEFAULT_BATCH_SIZE == 4
    args = inference_parser().parse_args(["--checkpoint", str(conv_checkpoint), "--amp", "none", "--batch-size", "2"])
    enhancer_from_args(args)
    assert requests[1][2]["batch_size"] == 2


def test_denoise_flags_reach_a_diffusion_member_as_integers(diffusion_checkpoint):
    parser = inference_parser()
    args = parser.parse_args(["--checkpoint", str(diffusion_checkpoint), "--device", "cpu",
                              "--denoise-steps", "3", "--denoise-seed", "11"])
    assert enhancer_from_args(args).members[0].sampling == {"steps": 3, "seed": 11}
    args = parser.parse_args(["--checkpoint", str(diffusion_checkpoint), "--device", "cpu"])
    assert enhancer_from_args(args).members[0].sampling == {"steps": None, "seed": None}  # the run's own


def test_sampling_reaches_every_member_through_load_enhancer_and_load_member(diffusion_checkpoint):
    sampling = {"steps": 5, "seed": 2}
    enhancer = load_enhancer([diffusion_checkpoint, diffusion_checkpoint], sampling=sampling)
    assert [member.sampling for member in enhancer.members] == [sampling, sampling]
    assert load_member(diffusion_checkpoint, "cpu", sampling=sampling).sampling == sampling


def test_compile_flag_compiles_the_networks(conv_checkpoint, monkeypatch):
    compiled = []
    monkeypatch.setattr(torch, "compile", lambda module: compiled.append(module) or ("compiled", module))
    args = inference_parser().parse_args(["--checkpoint", str(conv_checkpoint), "--device", "cpu", "--compile"])
    assert args.compile is True
    member = enhancer_from_args(args).members[0]
    assert compiled == [member.model] and member.forward == ("compiled", member.model)
    args = inference_parser().parse_args(["--checkpoint", str(conv_checkpoint), "--device", "cpu"])
    assert args.compile is False
    member = enhancer_from_args(args).members[0]
    assert member.forward is member.model and len(compiled) == 1


def test_arguments_without_a_compile_flag_load_eagerly(conv_checkpoint):
    args = argparse.Namespace(checkpoint=[str(conv_checkpoint)], trust_checkpoint=False, device="cpu", tile=0,
                              overlap=0, batch_size=None, amp=None, denoise_steps=None, denoise_seed=None)
    member = enhancer_from_args(args).members[0]
    assert member.forward is member.model


def test_compile_of_a_diffusion_member_is_refused_naming_it(diffusion_checkpoint):
    args = inference_parser().parse_args(["--checkpoint", str(diffusion_checkpoint), "--device", "cpu", "--compile"])
    with pytest.raises(ValueError, match=rf"^--compile: TinyDiffusion from {diffusion_checkpoint} is a diffusion "
                                         r"pipeline, which is not compiled$"):
        enhancer_from_args(args)


def test_loading_prints_the_model(conv_checkpoint, capsys):
    enhancer_from_args(inference_parser().parse_args(["--checkpoint", str(conv_checkpoint), "--device", "cpu"]))
    assert capsys.readouterr().out == f"model: LocalConvNet (1,027 parameters, weights, step 7) from {conv_checkpoint}\n"


def test_trust_checkpoint_flag_lets_a_pickled_object_load(conv_checkpoint, tmp_path, monkeypatch):
    monkeypatch.delenv(TRUST_ENV, raising=False)
    monkeypatch.setattr(utils.checkpoint, "_trust_flag", False)  # process state: restored after the test
    path = tmp_path / "legacy" / "best.pt"
    path.parent.mkdir()
    torch.save({**load_checkpoint(conv_checkpoint), "opt": argparse.Namespace(lr=1e-3)}, path)
    parser = inference_parser()
    with pytest.raises(CheckpointError, match="argparse.Namespace"):
        enhancer_from_args(parser.parse_args(["--checkpoint", str(path), "--device", "cpu"]))
    args = parser.parse_args(["--checkpoint", str(path), "--device", "cpu", "--trust-checkpoint"])
    assert args.trust_checkpoint is True
    assert enhancer_from_args(args).members[0].source == str(path)


# ------------------------------------------------------------------ the --checkpoint flag

def test_checkpoint_flag_takes_several_paths_as_an_ensemble():
    args = inference_parser().parse_args(["--checkpoint", "cv/fold_1", "cv/fold_2", "--tile", "0"])
    assert args.checkpoint == ["cv/fold_1", "cv/fold_2"] and args.tile == 0


def test_checkpoint_is_required_only_where_asked(capsys):
    with pytest.raises(SystemExit):
        inference_parser("required").parse_args(["--device", "cpu"])
    assert "the following arguments are required: --checkpoint" in capsys.readouterr().err
    assert inference_parser("optional").parse_args([]).checkpoint is None
    assert inference_parser().parse_args([]).checkpoint is None


def test_checkpoint_flag_is_not_offered_for_none():
    args = inference_parser("none").parse_args(["--tile", "16"])
    assert not hasattr(args, "checkpoint") and args.tile == 16
    with pytest.raises(SystemExit):
        inference_parser("none").parse_args(["--checkpoint", "run"])


def test_amp_flag_accepts_only_the_three_modes(capsys):
    parser = inference_parser()
    assert [parser.parse_args(["--amp", mode]).amp for mode in ("none", "bf16", "fp16")] == ["none", "bf16", "fp16"]
    with pytest.raises(SystemExit):
        parser.parse_args(["--amp", "fp8"])
    assert "invalid choice: 'fp8'" in capsys.readouterr().err


# ------------------------------------------------------------------ documented errors

def test_bad_amp_is_refused_before_loading(tmp_path):
    with pytest.raises(ValueError, match=r"^--amp must be one of none, bf16, fp16, got 'fp8'$"):
        load_enhancer(tmp_path / "not_even_there", amp="fp8")


@pytest.mark.parametrize("tile, batch_size", [(100, 1), (-8, 1), (16, 0)])
def test_bad_tile_or_batch_size_is_refused(tile, batch_size):
    with pytest.raises(ValueError, match=rf"^--tile must be 0 or a positive multiple of 8, and --batch-size >= 1; "
                                         rf"got {tile} and {batch_size}$"):
        Tiling(tile, 0, batch_size)


def test_overlap_must_stay_under_half_a_tile():
    assert Tiling(16, 7, 1).overlap == 7 and Tiling(0, 0, 1).tile == 0 and Tiling(8, 0, 1).tile == 8
    with pytest.raises(ValueError, match=r"^--overlap 8 must be in \[0, tile/2\) for --tile 16$"):
        Tiling(16, 8, 1)
    with pytest.raises(ValueError, match=r"^--overlap -1 must be in"):
        Tiling(16, -1, 1)


def test_load_enhancer_passes_the_batch_size(conv_checkpoint):
    assert load_enhancer(conv_checkpoint, tile=16, overlap=4, batch_size=2).members[0].tiling.batch_size == 2


def test_enhancer_without_models_is_refused():
    with pytest.raises(ValueError, match="^an Enhancer needs at least one model$"):
        Enhancer([], "cpu")


def test_no_checkpoint_given_is_refused():
    with pytest.raises(CheckpointError, match="^no checkpoint given$"):
        resolve_checkpoints([])


def test_missing_checkpoint_message_says_what_to_give(tmp_path):
    with pytest.raises(CheckpointError, match=rf"^checkpoint not found: {tmp_path / 'gone'} \(give a \.pt file, a run "
                                              r"folder with best\.pt/last\.pt, or a folder of fold_\*/ runs\)$"):
        resolve_checkpoints(tmp_path / "gone")


def test_folder_without_a_checkpoint_is_refused(tmp_path):
    (tmp_path / "empty_run").mkdir()
    with pytest.raises(CheckpointError, match=rf"^checkpoint folder {tmp_path / 'empty_run'} has neither best\.pt nor "
                                              r"last\.pt \(nor an export's model\.safetensors or model\.onnx\)$"):
        resolve_checkpoints(tmp_path / "empty_run")


def test_run_folder_with_its_own_best_pt_is_not_read_as_folds(tmp_path):
    save_model_checkpoint(tmp_path / "run" / "best.pt", LocalConvNet(), {})
    save_model_checkpoint(tmp_path / "run" / "fold_1" / "best.pt", LocalConvNet(), {})
    assert resolve_checkpoints(tmp_path / "run") == [tmp_path / "run" / "best.pt"]


def test_file_without_a_run_config_is_refused(tmp_path):
    for name, content in (("list.pt", [torch.zeros(2)]), ("weights.pt", {"params": {"w": torch.zeros(1)}})):
        torch.save(content, tmp_path / name)
        with pytest.raises(CheckpointError, match=rf"^{tmp_path / name} has no run config: enhance needs a checkpoint "
                                                  r"written by a train_\*\.py script \(published weights go in "
                                                  r"through a script's --pretrained\)$"):
            load_member(tmp_path / name, "cpu")


def test_config_without_a_model_names_the_keys_expected(tmp_path):
    path = tmp_path / "odd.pt"
    torch.save({"config": {"lr": 1e-3}}, path)
    with pytest.raises(CheckpointError, match=rf"^{path}: its config names no model \(expected one of the keys "
                                              r"controlnet, refiner, model\)$"):
        load_member(path, "cpu")


# ------------------------------------------------------------------ loading by suffix

def test_load_member_defaults_to_full_precision(conv_checkpoint):
    member = load_member(conv_checkpoint, "cpu")
    assert isinstance(member, NetworkModel) and member.amp == "none"
    assert member.tiling.tile == inference.DEFAULT_TILE


def test_exported_safetensors_with_config_loads_as_the_run(conv_checkpoint, tmp_path):
    from utils.export import export_safetensors
    weights, _ = export_safetensors(conv_checkpoint, tmp_path / "deploy")
    photo = gradient_photo()
    member = load_member(weights, "cpu", tiling=Tiling(0, 0, 1))
    assert isinstance(member, NetworkModel) and member.source == str(weights)
    expected = load_member(conv_checkpoint, "cpu", tiling=Tiling(0, 0, 1)).predict(photo)
    torch.testing.assert_close(member.predict(photo), expected, rtol=0, atol=0)


def test_onnx_export_loads_on_onnxruntime_with_the_tiling_asked(conv_checkpoint, tmp_path):
    pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    from utils.export import export_onnx
    (graph, _), _ = export_onnx(conv_checkpoint, tmp_path / "deploy")
    assert resolve_checkpoints(tmp_path / "deploy") == [graph]  # an export folder gives its model.onnx
    member = load_member(graph, "cpu", tiling=Tiling(16, 4, 2))
    assert isinstance(member, OnnxModel) and member.source == str(graph) and member.device == torch.device("cpu")
    assert (member.tiling.tile, member.tiling.overlap, member.tiling.batch_size) == (16, 4, 2)
    assert load_member(graph, "cpu").tiling.tile == inference.DEFAULT_TILE


# ------------------------------------------------------------------ depth model precision

@pytest.mark.parametrize("amp, dtype", [("none", None), ("bf16", torch.bfloat16), ("fp16", torch.float16)])
def test_depth_model_runs_in_the_amp_precision(amp, dtype, tmp_path, monkeypatch):
    import utils.features
    asked = []

    def fake_depth_model(path, device, autocast_dtype=None):
        asked.append(autocast_dtype)
        return lambda rgb: torch.zeros_like(rgb[:, :1])

    monkeypatch.setattr(utils.features, "load_depth_model", fake_depth_model)
    checkpoint = save_model_checkpoint(tmp_path / "run" / "best.pt", LocalConvNet(inp_channels=4), {"inp_channels": 4},
                                       input_features=["depth"], depth_model=str(tmp_path / "dpt"))
    load_enhancer(checkpoint, amp=amp, tile=0).enhance(gradient_photo())
    assert asked == [dtype]


# ------------------------------------------------------------------ writing outputs

def test_write_like_creates_missing_nested_folders(tmp_path):
    photo = tmp_path / "photo.png"
    write_image(photo, gradient_photo())
    destination = tmp_path / "out" / "kitchen" / "north" / "photo.png"
    write_like(photo, destination, gradient_photo())
    assert destination.is_file() and sorted(p.name for p in destination.parent.iterdir()) == ["photo.png"]
    np.testing.assert_allclose(read_image(destination), gradient_photo(), atol=1 / 255)


def test_write_like_honours_the_jpeg_quality(tmp_path):
    photo = tmp_path / "photo.jpg"
    rgb = gradient_photo(48, 64)
    write_image(photo, rgb)
    for name, quality in (("q95.jpg", 95), ("q40.jpg", 40)):
        write_like(photo, tmp_path / name, rgb, quality=quality)
    write_like(photo, tmp_path / "default.jpg", rgb)
    assert (tmp_path / "default.jpg").read_bytes() == (tmp_path / "q95.jpg").read_bytes()  # the default is 95
    with Image.open(tmp_path / "q40.jpg") as low, Image.open(tmp_path / "q95.jpg") as high:
        assert low.quantization[0] != high.quantization[0]
    assert (tmp_path / "q40.jpg").stat().st_size < (tmp_path / "q95.jpg").stat().st_size


def test_output_as_new_as_its_photo_is_up_to_date(tmp_path):
    photo, output = tmp_path / "photo.png", tmp_path / "out.png"
    photo.write_bytes(b"photo")
    assert not is_up_to_date(photo, output)
    output.write_bytes(b"output")
    os.utime(photo, (1_000_000, 1_000_000))
    os.utime(output, (1_000_000, 1_000_000))
    assert is_up_to_date(photo, output)
    os.utime(output, (999_999, 999_999))
    assert not is_up_to_date(photo, output)
