"""enhance.py and utils/inference.py: tiled == whole, bit depth / metadata / size kept, bad files skipped,
ensembles, EMA weights, feature channels (depth once per photo) and preprocessing from the checkpoint."""
import cv2
import numpy as np
import pytest
import torch
from PIL import ExifTags, Image, ImageCms

import enhance
from data.io import read_image, read_metadata, write_image
from tests.conftest import LocalConvNet, save_model_checkpoint
from utils.checkpoint import CheckpointError
from utils.inference import Enhancer, NetworkModel, Tiling, load_enhancer, resolve_checkpoints


def smooth_photo(height, width, seed=0):
    """A smooth random RGB photo in [0, 1] with a blown-out corner, HxWx3 float32."""
    rng = np.random.default_rng(seed)
    photo = cv2.resize(rng.random((5, 5, 3)).astype(np.float32), (width, height), interpolation=cv2.INTER_CUBIC)
    photo = np.clip(photo, 0, 1)
    photo[: height // 4, : width // 4] = 1.0
    return photo


def srgb_profile() -> bytes:
    return ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()


def exif_with_artist(artist="Test Photographer") -> bytes:
    exif = Image.Exif()
    exif[ExifTags.Base.Artist] = artist
    return exif.tobytes()


def test_tiled_and_whole_agree_within_one_level(conv_checkpoint, tmp_path):
    photos = tmp_path / "photos"
    photos.mkdir()
    write_image(photos / "room.png", smooth_photo(88, 120), bit_depth=16)
    common = ["--checkpoint", str(conv_checkpoint), "--input", str(photos), "--device", "cpu"]
    enhance.main(common + ["--out", str(tmp_path / "whole"), "--tile", "0"])
    enhance.main(common + ["--out", str(tmp_path / "tiled"), "--tile", "48", "--overlap", "16", "--batch-size", "3"])
    whole, tiled = read_image(tmp_path / "whole" / "room.png"), read_image(tmp_path / "tiled" / "room.png")
    assert whole.shape == tiled.shape == (88, 120, 3)
    assert np.abs(whole - read_image(photos / "room.png")).mean() > 0.01  # the model does change the photo
    assert np.abs(whole - tiled).max() <= 1 / 255


def test_restormer_tiles_blend_without_seams(tiny_restormer_checkpoint):
    """Restormer's channel attention is global over its input, so a tile's output differs from the
    whole image's; blending over the overlap keeps that difference small, where hard tile borders show
    as seams. (Numbers for this randomly initialised tiny model, whose edit is strong: 17/255 on average.)"""
    photo = smooth_photo(96, 160, seed=3)
    whole = load_enhancer(tiny_restormer_checkpoint, tile=0).enhance(photo)
    blended = np.abs(load_enhancer(tiny_restormer_checkpoint, tile=64, overlap=16).enhance(photo) - whole)
    hard = np.abs(load_enhancer(tiny_restormer_checkpoint, tile=64, overlap=0).enhance(photo) - whole)
    assert blended.mean() < 2 / 255 and blended.max() < 12 / 255
    assert hard.max() > 3 * blended.max()


@pytest.mark.parametrize("extension", [".png", ".tif"])
def test_sixteen_bit_round_trip(identity_checkpoint, tmp_path, extension):
    ramp = np.linspace(0, 65535, 64 * 80 * 3).reshape(64, 80, 3).astype(np.uint16)
    photo = tmp_path / f"ramp{extension}"
    cv2.imwrite(str(photo), ramp)
    enhance.main(["--checkpoint", str(identity_checkpoint), "--input", str(photo), "--out", str(tmp_path / "out"),
                  "--tile", "32", "--overlap", "8", "--device", "cpu"])
    written = cv2.imread(str(tmp_path / "out" / f"ramp{extension}"), cv2.IMREAD_UNCHANGED)
    assert written.dtype == np.uint16
    np.testing.assert_array_equal(written, ramp)


def test_metadata_format_and_suffix(identity_checkpoint, tmp_path):
    photos = tmp_path / "photos"
    (photos / "kitchen").mkdir(parents=True)
    icc, exif = srgb_profile(), exif_with_artist()
    write_image(photos / "kitchen" / "a.jpg", smooth_photo(40, 56), exif=exif, icc_profile=icc)
    write_image(photos / "b.png", smooth_photo(40, 56, seed=1), bit_depth=16, exif=exif, icc_profile=icc)
    written = enhance.main(["--checkpoint", str(identity_checkpoint.parent), "--input", str(photos),
                            "--out", str(tmp_path / "out"), "--suffix", "_hdr", "--device", "cpu"])
    assert sorted(p.relative_to(tmp_path / "out").as_posix() for p in written) == ["b_hdr.png", "kitchen/a_hdr.jpg"]
    for source, output in ((photos / "kitchen" / "a.jpg", tmp_path / "out" / "kitchen" / "a_hdr.jpg"),
                           (photos / "b.png", tmp_path / "out" / "b_hdr.png")):
        assert read_metadata(output) == read_metadata(source)
        assert Image.open(output).format == Image.open(source).format
    metadata = read_metadata(tmp_path / "out" / "b_hdr.png")
    carried = Image.Exif()
    carried.load(metadata["exif"])
    assert metadata["bit_depth"] == 16 and metadata["icc_profile"] == icc
    assert carried[ExifTags.Base.Artist] == "Test Photographer"


def test_odd_size_is_kept(conv_checkpoint, tmp_path):
    photo = tmp_path / "odd.jpg"
    write_image(photo, smooth_photo(667, 1001))
    enhance.main(["--checkpoint", str(conv_checkpoint), "--input", str(photo), "--out", str(tmp_path / "out"),
                  "--tile", "256", "--overlap", "32", "--device", "cpu"])
    with Image.open(tmp_path / "out" / "odd.jpg") as output:
        assert output.size == (1001, 667) and output.format == "JPEG"


def test_corrupt_file_is_named_and_skipped(identity_checkpoint, tmp_path):
    photos = tmp_path / "photos"
    (photos / "sub").mkdir(parents=True)
    write_image(photos / "a.png", smooth_photo(32, 40))
    write_image(photos / "sub" / "b.jpg", smooth_photo(32, 40, seed=1))
    (photos / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 this is not a JPEG")
    (photos / "notes.txt").write_text("not a photo, ignored")
    with pytest.raises(SystemExit) as failure:
        enhance.main(["--checkpoint", str(identity_checkpoint), "--input", str(photos),
                      "--out", str(tmp_path / "out"), "--device", "cpu"])
    message = str(failure.value.code)
    assert message.startswith("error: 1 of 3 photo(s) failed:") and "broken.jpg" in message and "\n" not in message
    assert (tmp_path / "out" / "a.png").is_file() and (tmp_path / "out" / "sub" / "b.jpg").is_file()
    assert not (tmp_path / "out" / "broken.jpg").exists()


def test_inputs_are_never_overwritten(identity_checkpoint, tmp_path):
    photos = tmp_path / "photos"
    photos.mkdir()
    write_image(photos / "a.png", smooth_photo(32, 40))
    before = (photos / "a.png").read_bytes()
    with pytest.raises(ValueError, match="would overwrite the input"):
        enhance.main(["--checkpoint", str(identity_checkpoint), "--input", str(photos), "--out", str(photos),
                      "--device", "cpu"])
    enhance.main(["--checkpoint", str(identity_checkpoint), "--input", str(photos), "--out", str(photos / "edited"),
                  "--device", "cpu"])
    # the output folder inside the input folder is not read back as input on a second run
    written = enhance.main(["--checkpoint", str(identity_checkpoint), "--input", str(photos),
                            "--out", str(photos / "edited"), "--device", "cpu", "--overwrite"])
    assert written == [photos / "edited" / "a.png"] and (photos / "a.png").read_bytes() == before


def test_bad_arguments_raise_one_line_errors(identity_checkpoint, tmp_path):
    with pytest.raises(FileNotFoundError, match="--input .*missing.jpg does not exist"):
        enhance.main(["--checkpoint", str(identity_checkpoint), "--input", str(tmp_path / "missing.jpg"),
                      "--out", str(tmp_path / "out")])
    with pytest.raises(CheckpointError, match="checkpoint not found"):
        resolve_checkpoints([tmp_path / "nothing_here"])
    with pytest.raises(ValueError, match="multiple of 8"):
        load_enhancer(identity_checkpoint, tile=100)
    torch.save({"params": LocalConvNet().state_dict()}, tmp_path / "published.pth")
    with pytest.raises(CheckpointError, match="has no run config"):
        load_enhancer(tmp_path / "published.pth")


def test_cross_validation_folder_is_an_ensemble(tmp_path):
    torch.manual_seed(1)
    folds = [LocalConvNet(), LocalConvNet(identity=True), LocalConvNet()]
    for index, model in enumerate(folds, start=1):
        save_model_checkpoint(tmp_path / "cv" / f"fold_{index}" / "best.pt", model, {})
    assert [p.parent.name for p in resolve_checkpoints(tmp_path / "cv")] == ["fold_1", "fold_2", "fold_3"]
    photo = smooth_photo(40, 48)
    ensemble = load_enhancer(tmp_path / "cv", tile=0)
    assert len(ensemble.members) == 3
    with torch.no_grad():
        x = torch.from_numpy(photo).permute(2, 0, 1)[None]
        expected = torch.stack([model.eval()(x).clamp(0, 1) for model in folds]).mean(0)[0].permute(1, 2, 0).numpy()
    np.testing.assert_allclose(ensemble.enhance(photo), expected, atol=1e-6)


def test_ema_weights_are_used(tmp_path):
    torch.manual_seed(2)
    checkpoint = save_model_checkpoint(tmp_path / "run" / "last.pt", LocalConvNet(), {},
                                       ema_model=LocalConvNet(identity=True))
    enhancer = load_enhancer(tmp_path / "run")  # a run folder without best.pt: its last.pt
    assert enhancer.members[0].source == str(checkpoint) and enhancer.members[0].used_ema
    photo = smooth_photo(24, 32)
    np.testing.assert_allclose(enhancer.enhance(photo), photo, atol=1e-6)


def test_feature_channels_are_built_from_the_whole_photo(tmp_path):
    from data.features import build_inputs
    torch.manual_seed(3)
    spec = ["proxy_depth", "edge", "saturation"]
    model = LocalConvNet(inp_channels=6)
    checkpoint = save_model_checkpoint(tmp_path / "run" / "best.pt", model, {"inp_channels": 6}, input_features=spec)
    photo = smooth_photo(72, 96)
    tiled = load_enhancer(checkpoint, tile=48, overlap=16).enhance(photo)
    with torch.no_grad():
        x = build_inputs(torch.from_numpy(photo).permute(2, 0, 1)[None], spec)
        expected = model.eval()(x).clamp(0, 1)[0].permute(1, 2, 0).numpy()
    # features of the whole photo, then tiled with RGB: equal to the whole-image forward
    np.testing.assert_allclose(tiled, expected, atol=1e-5)


def test_depth_is_estimated_once_per_photo(tmp_path, monkeypatch):
    from transformers import DPTForDepthEstimation

    from models.depth import DepthEstimator, tiny_dpt_config
    torch.manual_seed(4)
    depth_dir = tmp_path / "tiny_dpt"
    DPTForDepthEstimation(tiny_dpt_config(image_size=32)).save_pretrained(depth_dir)
    calls = []
    original_call = DepthEstimator.__call__
    monkeypatch.setattr(DepthEstimator, "__call__",
                        lambda self, rgb: calls.append(rgb.shape) or original_call(self, rgb))
    models = [LocalConvNet(inp_channels=4), LocalConvNet(inp_channels=4)]
    for index, model in enumerate(models):
        save_model_checkpoint(tmp_path / "cv" / f"fold_{index}" / "best.pt", model, {"inp_channels": 4},
                              input_features=["depth"], depth_model=str(depth_dir))
    enhancer = load_enhancer(tmp_path / "cv", tile=32, overlap=8)
    output = enhancer.enhance(smooth_photo(64, 80))
    assert output.shape == (64, 80, 3) and np.isfinite(output).all()
    assert calls == [torch.Size([1, 3, 64, 80])]  # the whole photo, once for the two-model ensemble


def test_preprocessing_from_the_checkpoint(tmp_path):
    from data.preprocess import apply_pipeline
    pipeline = [{"name": "grayworld", "strength": 1.0, "max_gain": 2.0}]
    checkpoint = save_model_checkpoint(tmp_path / "wb" / "best.pt", LocalConvNet(identity=True), {"identity": True},
                                       preprocess=pipeline)
    photo = smooth_photo(40, 56) * np.array([1.0, 0.8, 0.6], np.float32)
    np.testing.assert_allclose(load_enhancer(checkpoint).enhance(photo), apply_pipeline(pipeline, photo), atol=1e-6)

    # a resize step: the network works on the reduced photo, the output keeps the photo's size and detail
    resize = [{"name": "resize", "max_side": 32}]
    checkpoint = save_model_checkpoint(tmp_path / "small" / "best.pt", LocalConvNet(identity=True),
                                       {"identity": True}, preprocess=resize)
    output = load_enhancer(checkpoint).enhance(photo)
    assert output.shape == photo.shape
    np.testing.assert_allclose(output, photo, atol=1e-5)  # an identity network makes no edit


def test_enhancer_accepts_models_built_in_memory():
    model = NetworkModel(LocalConvNet(identity=True), {}, "<memory>", "cpu", tiling=Tiling(tile=0))
    enhancer = Enhancer([model], "cpu")
    photo = smooth_photo(16, 24)
    np.testing.assert_array_equal(enhancer.enhance(photo), photo)
    with pytest.raises(ValueError, match="HxWx3"):
        enhancer.enhance(photo[..., 0])
