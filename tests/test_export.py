"""export.py and the exported formats: safetensors round trip (exact), ONNX export of every architecture
(checked against PyTorch, or refused naming the operator), enhance.py through onnxruntime."""
import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

import enhance
import export
from data.io import read_image, write_image
from tests.conftest import LocalConvNet, save_model_checkpoint
from tests.test_enhance import smooth_photo
from utils.checkpoint import CheckpointError, build_model, load_pretrained
from utils.export import ExportBlocked, export_onnx
from utils.inference import OnnxModel, load_enhancer

TINY_RESTORMER = dict(dim=8, num_blocks=[1, 1, 1, 1], num_refinement_blocks=1, heads=[1, 1, 1, 1])
TINY_DARKIR = dict(width=8, enc_blk_nums=[1, 1, 1], dec_blk_nums=[1, 1, 1], middle_blk_num_enc=1, middle_blk_num_dec=1)
# Every image-to-image architecture of models/, tiny; None: exports and passes the check, else what the
# one-line refusal must name (the operator, or the module whose graph cannot have dynamic H and W).
ARCHITECTURES = {
    "models.restormer.Restormer": (TINY_RESTORMER, None),
    "models.gain.GainRestormer": (TINY_RESTORMER, None),
    "models.zero_conv.ZeroConvRestormer": (TINY_RESTORMER, None),
    "models.darkir.DarkIR": (TINY_DARKIR, None),  # its FFT block through utils.export.ONNX_SUBSTITUTES
    "models.mambair.MambaIR": (dict(upscale=1, embed_dim=30, depths=[1, 1], mlp_ratio=1.2, d_state=4,
                                    drop_path_rate=0.0), "SS2D: its selective scan"),
    "models.mambair.MambaIRUNet": (dict(dim=30, num_blocks=[1, 1, 1, 1], num_refinement_blocks=1, mlp_ratio=1.5),
                                   "SS2D: its selective scan"),
    "models.retinexformer.RetinexFormer": (dict(n_feat=8, stage=1, num_blocks=[1, 1, 1]), None),
    "models.retinexmamba.RetinexMamba": (dict(n_feat=4, stage=1, num_blocks=[1, 1, 1], d_state=2), "SS2D: its selective scan"),
    "models.nafnet.NAFNet": (dict(width=8, middle_blk_num=1, enc_blk_nums=[1, 1], dec_blk_nums=[1, 1]), None),
    "models.nafnet.NAFNetLocal": (dict(width=8, middle_blk_num=1, enc_blk_nums=[1, 1], dec_blk_nums=[1, 1],
                                       train_size=[1, 3, 32, 32]), "LocalAvgPool2d: its pooling window"),
    "tests.test_export.SpectralNet": ({}, "aten::fft_rfft2"),
    "models.hat.HAT": (dict(upscale=1, img_size=32, window_size=8, embed_dim=12, depths=[2], num_heads=[2], mlp_ratio=2,
                            squeeze_factor=4, upsampler="pixelshuffle"), None),
    "models.dat.DAT": (dict(upscale=1, img_size=16, split_size=[4, 8], depth=[2, 1], embed_dim=64, num_heads=[2, 2],
                            expansion_factor=2), None),
}


class SpectralNet(torch.nn.Module):
    """A network with a complex FFT that no substitute covers: what a refused export looks like."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 3, 1)

    def forward(self, x):
        return torch.fft.irfft2(torch.fft.rfft2(self.conv(x)), s=x.shape[-2:])


def run_with_ema(tmp_path, cls_path="models.restormer.Restormer", kwargs=TINY_RESTORMER, **config):
    """RUN/best.pt whose EMA weights differ from its raw weights."""
    spec = {"class": cls_path, "kwargs": kwargs}
    torch.manual_seed(0)
    model, ema = build_model(spec), build_model(spec)
    return save_model_checkpoint(tmp_path / "run" / "best.pt", model, kwargs, ema_model=ema, **config)


def test_safetensors_round_trip_reproduces_the_run_exactly(tmp_path, capsys):
    checkpoint = run_with_ema(tmp_path)
    written = export.main(["--checkpoint", str(checkpoint.parent), "--format", "safetensors", "--out", str(tmp_path / "deploy")])
    assert sorted(path.name for path in written) == ["config.json", "model.safetensors"]
    config = json.loads((tmp_path / "deploy" / "config.json").read_text())
    assert config["model"] == {"class": "models.restormer.Restormer", "kwargs": TINY_RESTORMER}
    assert config["weights"] == "ema" and config["input_features"] is None and config["preprocess"] == []
    # the EMA weights, loadable strictly by load_pretrained from the file and from its folder
    ema = torch.load(checkpoint, weights_only=True)["ema"]
    assert load_file(tmp_path / "deploy" / "model.safetensors").keys() == ema.keys()
    for source in (tmp_path / "deploy" / "model.safetensors", tmp_path / "deploy"):
        model = build_model(config["model"])
        load_pretrained(model, source, strict=True)
        assert all(torch.equal(model.state_dict()[name], ema[name]) for name in ema)
    photos = tmp_path / "photos"
    photos.mkdir()
    write_image(photos / "room.jpg", smooth_photo(72, 100))
    write_image(photos / "hall.png", smooth_photo(40, 48, seed=2), bit_depth=16)
    common = ["--input", str(photos), "--tile", "64", "--overlap", "16", "--device", "cpu"]
    enhance.main(["--checkpoint", str(checkpoint.parent), "--out", str(tmp_path / "from_run")] + common)
    enhance.main(["--checkpoint", str(tmp_path / "deploy"), "--out", str(tmp_path / "from_export")] + common)
    assert "EMA weights, step 7) from " + str(tmp_path / "deploy" / "model.safetensors") in capsys.readouterr().out
    for name in ("room.jpg", "hall.png"):
        assert (tmp_path / "from_run" / name).read_bytes() == (tmp_path / "from_export" / name).read_bytes()


@pytest.mark.parametrize("cls_path", sorted(ARCHITECTURES))
def test_every_architecture_exports_to_onnx_or_names_the_blocking_operator(tmp_path, cls_path):
    kwargs, blocker = ARCHITECTURES[cls_path]
    checkpoint = run_with_ema(tmp_path, cls_path, kwargs)
    if blocker is not None:
        with pytest.raises(ExportBlocked) as refusal:
            export_onnx(checkpoint, tmp_path / "deploy")
        message = str(refusal.value)
        assert blocker in message and "--format safetensors" in message and "\n" not in message
        return
    (path, _), difference = export_onnx(checkpoint, tmp_path / "deploy")
    assert difference <= 1e-4
    # another size than the traced and the checked ones: H and W are dynamic; batch too
    photo = torch.rand(2, 3, 40, 96)
    model = build_model({"class": cls_path, "kwargs": kwargs})
    load_pretrained(model, checkpoint)
    member = OnnxModel(path, "cpu")
    with torch.no_grad():
        np.testing.assert_allclose(member.run_tiles(photo).numpy(), model.eval()(photo).clamp(0, 1).numpy(), atol=1e-4)


def test_export_command_prints_the_check_and_refuses_in_one_line(tmp_path, capsys):
    checkpoint = save_model_checkpoint(tmp_path / "run" / "best.pt", LocalConvNet(), {})
    export.main(["--checkpoint", str(checkpoint), "--format", "onnx", "--out", str(tmp_path / "deploy")])
    out = capsys.readouterr().out
    assert "onnx check: max |onnxruntime - PyTorch| = " in out and "opset 17" in out
    figure = float(out.split("= ")[1].split()[0])
    assert 0 <= figure <= 1e-4
    (tmp_path / "cv" / "fold_0").mkdir(parents=True)
    (tmp_path / "cv" / "fold_1").mkdir()
    for fold in ("fold_0", "fold_1"):
        (tmp_path / "cv" / fold / "best.pt").write_bytes(checkpoint.read_bytes())
    with pytest.raises(CheckpointError, match="holds 2 checkpoints"):
        export.main(["--checkpoint", str(tmp_path / "cv"), "--format", "safetensors", "--out", str(tmp_path / "x")])


def test_enhance_runs_an_onnx_export_like_the_pytorch_path(tmp_path, capsys):
    """Feature channels, tiling, blending, metadata and the skipping of a broken photo as with the run."""
    torch.manual_seed(1)
    spec = ["edge", "saturation"]
    checkpoint = save_model_checkpoint(tmp_path / "run" / "best.pt", LocalConvNet(inp_channels=5),
                                       {"inp_channels": 5}, input_features=spec)
    export.main(["--checkpoint", str(checkpoint), "--format", "onnx", "--out", str(tmp_path / "deploy")])
    photos = tmp_path / "photos"
    photos.mkdir()
    write_image(photos / "room.png", smooth_photo(83, 125), bit_depth=16)
    (photos / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not a JPEG")
    common = ["--input", str(photos), "--tile", "48", "--overlap", "16", "--device", "cpu"]
    for checkpoint_arg, out in ((checkpoint, "torch"), (tmp_path / "deploy" / "model.onnx", "onnx")):
        with pytest.raises(SystemExit) as failure:
            enhance.main(["--checkpoint", str(checkpoint_arg), "--out", str(tmp_path / out)] + common)
        assert str(failure.value.code).startswith("error: 1 of 2 photo(s) failed:") and "broken.jpg" in str(failure.value.code)
    assert "LocalConvNet (ONNX on onnxruntime CPUExecutionProvider, fp32" in capsys.readouterr().out
    from_torch, from_onnx = read_image(tmp_path / "torch" / "room.png"), read_image(tmp_path / "onnx" / "room.png")
    assert from_onnx.shape == (83, 125, 3) and np.abs(from_torch - read_image(photos / "room.png")).mean() > 0.01
    assert np.abs(from_torch - from_onnx).max() <= 1 / 65535
    # one enhancer API: an ONNX member and a PyTorch member form an ensemble
    ensemble = load_enhancer([checkpoint, tmp_path / "deploy" / "model.onnx"], tile=48, overlap=16)
    photo = smooth_photo(40, 56)
    np.testing.assert_allclose(ensemble.enhance(photo), load_enhancer(checkpoint, tile=48, overlap=16).enhance(photo),
                               atol=1e-5)


def test_exports_that_cannot_be_served_give_one_line_errors(tmp_path):
    (tmp_path / "lonely").mkdir()
    torch.save({"weight": torch.zeros(1)}, tmp_path / "lonely" / "weights.pt")
    from safetensors.torch import save_file
    save_file({"weight": torch.zeros(1)}, tmp_path / "lonely" / "model.safetensors")
    with pytest.raises(CheckpointError, match="has no run config"):  # bare weights without config.json
        load_enhancer(tmp_path / "lonely" / "model.safetensors")
    (tmp_path / "lonely" / "model.onnx").write_bytes(b"not a graph")
    with pytest.raises(CheckpointError, match="cannot read ONNX model"):
        load_enhancer(tmp_path / "lonely" / "model.onnx")
    controlnet = save_model_checkpoint(tmp_path / "cn" / "best.pt", LocalConvNet(), {}, controlnet={"pretrained": "x"})
    with pytest.raises(CheckpointError, match="ControlNet diffusion run"):
        export.main(["--checkpoint", str(controlnet), "--format", "onnx", "--out", str(tmp_path / "x")])
    refiner = save_model_checkpoint(tmp_path / "refiner" / "best.pt", LocalConvNet(), {},
                                    refiner={"path": "runs/backbone/best.pt", "sha256": "0" * 64})
    for fmt in ("onnx", "safetensors"):
        with pytest.raises(CheckpointError, match="colour refiner on a frozen backbone"):
            export.main(["--checkpoint", str(refiner), "--format", fmt, "--out", str(tmp_path / "x")])


def test_enhance_skips_outputs_newer_than_their_photo(identity_checkpoint, tmp_path, capsys):
    import os
    photos = tmp_path / "photos"
    photos.mkdir()
    for name in ("a.png", "b.png", "c.png"):
        write_image(photos / name, smooth_photo(24, 32))
    common = ["--checkpoint", str(identity_checkpoint), "--input", str(photos), "--out", str(tmp_path / "out"), "--device", "cpu"]
    assert len(enhance.main(common)) == 3
    stale = tmp_path / "out" / "b.png"
    os.utime(stale, (1, 1))  # older than its photo: redone
    (tmp_path / "out" / "c.png").unlink()
    assert enhance.main(common) == [stale, tmp_path / "out" / "c.png"]
    assert "skipping 1 photo(s)" in capsys.readouterr().out
    assert len(enhance.main(common + ["--overwrite"])) == 3
    assert not [p for p in (tmp_path / "out").iterdir() if p.name.startswith(".")]  # no temporary files left
