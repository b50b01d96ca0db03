"""Tests of the paired-image data library: io, pair discovery, dataset and loaders (tiny images)."""

import json
import pickle
import random

import cv2
import numpy as np
import pytest
import torch
from PIL import ExifTags, Image, ImageCms, ImageOps

from data import (
    INPUT_ALIASES,
    TARGET_ALIASES,
    DataLayoutError,
    ImagePair,
    ImageReadError,
    PairedDataset,
    ResumableSampler,
    check_pairs,
    discover_pairs,
    read_image,
    read_image_size,
    read_metadata,
    resolve_datasets_pairs,
    split_pairs,
    train_batches,
    val_loader,
    write_image,
)

ORIENTATION = ExifTags.Base.Orientation


def random_rgb8(height, width, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def save_rgb8(path, rgb8=None, size=(12, 16), seed=0):
    """Write an 8-bit RGB image (lossless unless JPEG/lossy WebP) and return its pixels."""
    rgb8 = random_rgb8(*size, seed=seed) if rgb8 is None else rgb8
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rgb8).save(path, **({"lossless": True} if path.suffix == ".webp" else {}))
    return rgb8


def exif_with_orientation(orientation, make=None):
    exif = Image.Exif()
    exif[ORIENTATION] = orientation
    if make is not None:
        exif[ExifTags.Base.Make] = make
    return exif.tobytes()


# --------------------------------------------------------------------------------------------- io


@pytest.mark.parametrize("extension", [".png", ".tif", ".tiff", ".webp", ".jpg", ".jpeg"])
def test_read_image_8bit_formats(tmp_path, extension):
    path = tmp_path / f"photo{extension}"
    rgb8 = save_rgb8(path, np.full((9, 14, 3), (200, 40, 90), dtype=np.uint8))
    image = read_image(path)
    assert image.dtype == np.float32 and image.shape == (9, 14, 3)
    tolerance = 3 / 255 if extension in (".jpg", ".jpeg") else 1e-6
    np.testing.assert_allclose(image, rgb8 / 255.0, atol=tolerance)


@pytest.mark.parametrize("extension", [".png", ".tif"])
def test_read_image_16bit_keeps_precision(tmp_path, extension):
    path = tmp_path / f"deep{extension}"
    bgr16 = np.zeros((8, 10, 3), dtype=np.uint16)
    bgr16[..., 0], bgr16[..., 1], bgr16[..., 2] = 3, 1000, 65535  # B, G, R
    assert cv2.imwrite(str(path), bgr16)
    image = read_image(path)
    assert image.dtype == np.float32
    # 1000/65535 is not representable in 8 bits (nearest: 4/255 = 1028/65535).
    np.testing.assert_allclose(image[0, 0] * 65535, [65535, 1000, 3], atol=1e-2)


def test_read_image_greyscale_and_alpha(tmp_path):
    grey = np.random.default_rng(1).integers(0, 256, (8, 11), dtype=np.uint8)
    Image.fromarray(grey, "L").save(tmp_path / "grey.png")
    grey16 = (grey.astype(np.uint16) * 257 + 1).astype(np.uint16)
    assert cv2.imwrite(str(tmp_path / "grey16.png"), grey16)
    rgba = np.dstack([random_rgb8(8, 11), np.full((8, 11), 7, dtype=np.uint8)])
    Image.fromarray(rgba, "RGBA").save(tmp_path / "rgba.png")
    Image.fromarray(rgba, "RGBA").save(tmp_path / "rgba.webp", lossless=True)

    for name, expected in [("grey.png", grey / 255.0), ("grey16.png", grey16 / 65535.0)]:
        image = read_image(tmp_path / name)
        assert image.shape == (8, 11, 3)
        for channel in range(3):
            np.testing.assert_allclose(image[..., channel], expected, atol=1e-6)
    for name in ("rgba.png", "rgba.webp"):
        np.testing.assert_allclose(read_image(tmp_path / name), rgba[..., :3] / 255.0, atol=1e-6)


def test_exif_orientation_6_jpeg_is_rotated(tmp_path):
    path = tmp_path / "portrait.jpg"
    stored = np.zeros((16, 32, 3), dtype=np.uint8)
    stored[:, :16] = 255  # left half white as stored -> top half white once rotated 90 degrees clockwise
    Image.fromarray(stored).save(path, exif=exif_with_orientation(6), quality=95)
    image = read_image(path)
    assert image.shape == (32, 16, 3)
    assert read_image_size(path) == (32, 16)
    assert image[:14].min() > 0.9 and image[18:].max() < 0.1


@pytest.mark.parametrize("extension", [".png", ".webp", ".tif"])
def test_every_exif_orientation_matches_pillow(tmp_path, extension):
    stored = random_rgb8(5, 7)
    for orientation in range(1, 9):
        path = tmp_path / f"o{orientation}{extension}"
        options = {"lossless": True} if extension == ".webp" else {}
        Image.fromarray(stored).save(path, exif=exif_with_orientation(orientation), **options)
        with Image.open(path) as opened:
            displayed = np.asarray(ImageOps.exif_transpose(opened).convert("RGB"))
        image = read_image(path)
        np.testing.assert_allclose(image, displayed / 255.0, atol=1e-6, err_msg=f"orientation {orientation}")
        assert read_image_size(path) == displayed.shape[:2]


def test_unreadable_files_raise_image_read_error(tmp_path):
    garbage = tmp_path / "garbage.jpg"
    garbage.write_bytes(b"this is not an image" * 10)
    png = tmp_path / "whole.png"
    save_rgb8(png, size=(20, 20))
    truncated = tmp_path / "truncated.png"
    truncated.write_bytes(png.read_bytes()[:-60])
    header_only = tmp_path / "header_only.png"
    header_only.write_bytes(png.read_bytes()[:12])
    missing = tmp_path / "missing.png"

    for path in (garbage, truncated, missing, header_only):
        with pytest.raises(ImageReadError, match=path.name):
            read_image(path)
    for path in (garbage, missing, header_only):
        with pytest.raises(ImageReadError, match=path.name):
            read_image_size(path)
    assert issubclass(ImageReadError, ValueError)


@pytest.mark.parametrize(
    "extension, bit_depth, tolerance",
    [(".png", 8, 0.5 / 255), (".tif", 8, 0.5 / 255), (".png", 16, 0.5 / 65535), (".tif", 16, 0.5 / 65535),
     (".jpg", 8, 0.06), (".webp", 8, 0.06)],
)
def test_write_read_round_trip(tmp_path, extension, bit_depth, tolerance):
    smooth = np.linspace(0, 1, 24 * 32 * 3, dtype=np.float32).reshape(24, 32, 3)
    path = tmp_path / f"out{extension}"
    write_image(path, smooth, bit_depth=bit_depth)
    back = read_image(path)
    assert back.shape == smooth.shape
    assert np.abs(back - smooth).max() <= tolerance + 1e-6
    assert read_metadata(path)["bit_depth"] == bit_depth


def test_write_image_clips_and_rounds(tmp_path):
    values = np.array([[[-0.5, 0.5 / 255 + 1e-4, 1.7]]], dtype=np.float32)
    write_image(tmp_path / "clip.png", values)
    np.testing.assert_allclose(read_image(tmp_path / "clip.png")[0, 0] * 255, [0, 1, 255], atol=1e-4)


def test_metadata_carried_over(tmp_path):
    icc_profile = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    source = tmp_path / "camera.jpg"
    Image.fromarray(random_rgb8(10, 20)).save(
        source, exif=exif_with_orientation(6, make="Canon"), icc_profile=icc_profile
    )
    metadata = read_metadata(source)
    assert metadata["icc_profile"] == icc_profile and metadata["bit_depth"] == 8
    carried = Image.Exif()
    carried.load(metadata["exif"])
    assert carried[ORIENTATION] == 1 and carried[ExifTags.Base.Make] == "Canon"

    upright = read_image(source)
    for name, bit_depth in [("out.jpg", 8), ("out.webp", 8), ("out.png", 8), ("out16.png", 16), ("out.tif", 8)]:
        path = tmp_path / name
        write_image(path, upright, bit_depth=bit_depth, exif=metadata["exif"], icc_profile=icc_profile)
        written = read_metadata(path)
        assert written["icc_profile"] == icc_profile, name
        assert written["bit_depth"] == bit_depth, name
        exif = Image.Exif()
        exif.load(written["exif"])
        assert exif[ORIENTATION] == 1 and exif[ExifTags.Base.Make] == "Canon", name
        assert ExifTags.Base.StripOffsets not in exif, name
        assert read_image(path).shape == (20, 10, 3), name


def test_read_metadata_without_metadata(tmp_path):
    save_rgb8(tmp_path / "plain.png")
    assert read_metadata(tmp_path / "plain.png") == dict(exif=None, icc_profile=None, bit_depth=8)


def test_write_image_rejects_bad_arguments(tmp_path):
    image = np.zeros((4, 4, 3), dtype=np.float32)
    with pytest.raises(ValueError, match="only .png and .tif"):
        write_image(tmp_path / "deep.jpg", image, bit_depth=16)
    with pytest.raises(ValueError, match="unknown image extension"):
        write_image(tmp_path / "photo.bmp", image)
    with pytest.raises(ValueError, match="HxWx3"):
        write_image(tmp_path / "grey.png", np.zeros((4, 4), dtype=np.float32))
    with pytest.warns(UserWarning, match="without EXIF/ICC"):
        write_image(tmp_path / "deep.tif", image, bit_depth=16, exif=exif_with_orientation(1, make="X"))


# ------------------------------------------------------------------------------------------ pairs


def make_pair_folders(root, input_name="input", target_name="target", names=("a", "b"), size=(8, 10)):
    for index, name in enumerate(names):
        save_rgb8(root / input_name / f"{name}.png", size=size, seed=index)
        save_rgb8(root / target_name / f"{name}.png", size=size, seed=index + 100)


@pytest.mark.parametrize("input_name", INPUT_ALIASES + ("INPUT", "Lq"))
def test_layout_folders_every_input_alias(tmp_path, input_name):
    make_pair_folders(tmp_path, input_name=input_name)
    found = discover_pairs(tmp_path)
    assert found["val"] is None
    assert [pair.name for pair in found["train"]] == ["a", "b"]
    assert found["train"][0] == ImagePair(tmp_path / input_name / "a.png", tmp_path / "target" / "a.png", "a")


@pytest.mark.parametrize("target_name", TARGET_ALIASES + ("GT", "Expert"))
def test_layout_folders_every_target_alias(tmp_path, target_name):
    make_pair_folders(tmp_path, target_name=target_name)
    found = discover_pairs(tmp_path)
    assert [pair.target for pair in found["train"]] == [tmp_path / target_name / name for name in ("a.png", "b.png")]


def test_target_aliases_can_be_extended(tmp_path):
    make_pair_folders(tmp_path, target_name="expertC")
    with pytest.raises(DataLayoutError, match="no target folder"):
        discover_pairs(tmp_path)
    found = discover_pairs(tmp_path, target_aliases=TARGET_ALIASES + ("expertc", "expert_c"))
    assert [pair.name for pair in found["train"]] == ["a", "b"]


def test_nested_folders_and_differing_extensions(tmp_path):
    save_rgb8(tmp_path / "input" / "house1" / "kitchen.jpg")
    save_rgb8(tmp_path / "target" / "house1" / "kitchen.png")
    save_rgb8(tmp_path / "input" / "house2" / "kitchen.JPG")
    save_rgb8(tmp_path / "target" / "house2" / "kitchen.tif")
    save_rgb8(tmp_path / "input" / "attic.webp")
    save_rgb8(tmp_path / "target" / "attic.jpeg")
    (tmp_path / "input" / "notes.txt").write_text("ignored")
    (tmp_path / "input" / "._attic.webp").write_bytes(b"macOS resource fork")
    pairs = discover_pairs(tmp_path)["train"]
    assert [pair.name for pair in pairs] == ["attic", "house1/kitchen", "house2/kitchen"]
    assert pairs[1].input == tmp_path / "input" / "house1" / "kitchen.jpg"
    assert pairs[2].target == tmp_path / "target" / "house2" / "kitchen.tif"


def test_layout_train_val_split_folders_with_aliases(tmp_path):
    make_pair_folders(tmp_path / "train", input_name="LQ", target_name="gt", names=("t1", "t2", "t3"))
    make_pair_folders(tmp_path / "Val", input_name="low", target_name="high", names=("v1",))
    found = discover_pairs(tmp_path)
    assert [pair.name for pair in found["train"]] == ["t1", "t2", "t3"]
    assert [pair.name for pair in found["val"]] == ["v1"]
    assert found["val"][0].input == tmp_path / "Val" / "low" / "v1.png"


def test_layout_train_folder_only_has_no_val(tmp_path):
    make_pair_folders(tmp_path / "train")
    assert discover_pairs(tmp_path)["val"] is None


def test_layout_flat_src_tar(tmp_path):
    for name in ("0007", "0012"):
        save_rgb8(tmp_path / f"{name}_src.jpg")
        save_rgb8(tmp_path / f"{name}_tar.png")
    pairs = discover_pairs(tmp_path)["train"]
    assert pairs == [
        ImagePair(tmp_path / "0007_src.jpg", tmp_path / "0007_tar.png", "0007"),
        ImagePair(tmp_path / "0012_src.jpg", tmp_path / "0012_tar.png", "0012"),
    ]


def test_layout_manifest_defines_the_pairs(tmp_path):
    for name in ("1", "2", "3"):
        save_rgb8(tmp_path / "images" / f"{name}_src.jpg")
        save_rgb8(tmp_path / "images" / f"{name}_tar.jpg")
    save_rgb8(tmp_path / "stray_src.jpg")  # not in the manifest: must not be paired
    lines = [json.dumps({"src": f"images/{name}_src.jpg", "tar": f"images/{name}_tar.jpg"}) for name in ("2", "1")]
    (tmp_path / "train.jsonl").write_text("\n".join(lines) + "\n\n")
    (tmp_path / "val.jsonl").write_text(json.dumps({"src": "images/3_src.jpg", "tar": "images/3_tar.jpg"}))
    found = discover_pairs(tmp_path)
    assert [pair.name for pair in found["train"]] == ["images/1", "images/2"]
    assert found["train"][0].target == tmp_path / "images" / "1_tar.jpg"
    assert [pair.name for pair in found["val"]] == ["images/3"]


def test_manifest_errors(tmp_path):
    save_rgb8(tmp_path / "1_src.jpg")
    manifest = tmp_path / "train.jsonl"
    manifest.write_text(json.dumps({"src": "1_src.jpg", "tar": "1_tar.jpg"}) + "\n")
    with pytest.raises(DataLayoutError, match=r"line 1 names a missing file '.*1_tar\.jpg'"):
        discover_pairs(tmp_path)
    manifest.write_text('{"src": "1_src.jpg", \n')
    with pytest.raises(DataLayoutError, match="line 1 is not valid JSON"):
        discover_pairs(tmp_path)
    manifest.write_text('{"input": "1_src.jpg"}\n')
    with pytest.raises(DataLayoutError, match='expected an object {"src"'):
        discover_pairs(tmp_path)


def test_error_path_does_not_exist(tmp_path):
    with pytest.raises(DataLayoutError, match=r"--data path '.*nowhere' does not exist"):
        discover_pairs(tmp_path / "nowhere")


def test_error_empty_folder(tmp_path):
    (tmp_path / ".DS_Store").write_bytes(b"")
    with pytest.raises(DataLayoutError, match="is empty"):
        discover_pairs(tmp_path)
    (tmp_path / "input").mkdir()
    (tmp_path / "target").mkdir()
    with pytest.raises(DataLayoutError, match="no images"):
        discover_pairs(tmp_path)


def test_error_unrecognisable_layout_lists_layouts_and_aliases(tmp_path):
    save_rgb8(tmp_path / "photos" / "a.jpg")
    save_rgb8(tmp_path / "edited" / "a.jpg")
    with pytest.raises(DataLayoutError) as raised:
        discover_pairs(tmp_path)
    message = str(raised.value)
    assert "no recognisable layout" in message and "\n" not in message
    assert "train/ and val/" in message and "_src" in message and "train.jsonl" in message
    assert all(alias in message for alias in INPUT_ALIASES + TARGET_ALIASES)


def test_error_inputs_without_target_counts_and_names_three(tmp_path):
    make_pair_folders(tmp_path, names=("shared",))
    for name in ("m1", "m2", "m3", "m4", "m5"):
        save_rgb8(tmp_path / "input" / f"{name}.png")
    with pytest.raises(DataLayoutError) as raised:
        discover_pairs(tmp_path)
    message = str(raised.value)
    assert "5 input image(s)" in message and "no matching target" in message
    assert "m1.png" in message and "m3.png" in message and "m4.png" not in message and "(+2 more)" in message


def test_error_targets_without_input(tmp_path):
    make_pair_folders(tmp_path, names=("shared",))
    save_rgb8(tmp_path / "target" / "lonely.png")
    with pytest.raises(DataLayoutError, match=r"1 target image\(s\) .* no matching input .*lonely\.png"):
        discover_pairs(tmp_path)


def test_error_flat_layout_unmatched(tmp_path):
    save_rgb8(tmp_path / "1_src.jpg")
    save_rgb8(tmp_path / "1_tar.jpg")
    save_rgb8(tmp_path / "2_src.jpg")
    with pytest.raises(DataLayoutError, match=r"1 input image\(s\).*2_src\.jpg"):
        discover_pairs(tmp_path)


def test_error_input_folder_without_target_folder(tmp_path):
    save_rgb8(tmp_path / "input" / "a.png")
    save_rgb8(tmp_path / "output" / "a.png")
    with pytest.raises(DataLayoutError, match="input folder 'input' but no target folder.*expert"):
        discover_pairs(tmp_path)


def test_error_two_input_folders(tmp_path):
    make_pair_folders(tmp_path)
    make_pair_folders(tmp_path, input_name="lq")
    with pytest.raises(DataLayoutError, match=r"several input folders \(input, lq\)"):
        discover_pairs(tmp_path)


def test_check_pairs_sizes_and_errors(tmp_path):
    make_pair_folders(tmp_path, names=("ok",), size=(8, 12))
    save_rgb8(tmp_path / "input" / "small.png", size=(8, 12))
    save_rgb8(tmp_path / "target" / "small.png", size=(8, 13))
    pairs = discover_pairs(tmp_path)["train"]
    assert check_pairs(pairs[:1]) == [(8, 12)]
    with pytest.raises(DataLayoutError, match=r"pair 'small'.* is 8x12 but target .* is 8x13"):
        check_pairs(pairs)

    broken = tmp_path / "target" / "ok.png"
    broken.write_bytes(b"\x89PNG\r\n")
    with pytest.raises(ImageReadError, match=r"ok\.png"):
        check_pairs(pairs[:1])


def test_check_pairs_accounts_for_orientation(tmp_path):
    stored = random_rgb8(8, 12)
    Image.fromarray(stored).save(tmp_path / "in.jpg", exif=exif_with_orientation(6))
    Image.fromarray(np.ascontiguousarray(np.rot90(stored, -1))).save(tmp_path / "out.png")
    assert check_pairs([ImagePair(tmp_path / "in.jpg", tmp_path / "out.png", "x")]) == [(12, 8)]


def fake_pairs(count):
    return [ImagePair(f"/in/{index:03d}.png", f"/tar/{index:03d}.png", f"{index:03d}") for index in range(count)]


def test_split_pairs_is_deterministic_and_order_independent():
    pairs = fake_pairs(50)
    train, val = split_pairs(pairs, 0.2, seed=3)
    assert len(val) == 10 and len(train) == 40
    assert sorted(train + val, key=lambda pair: pair.name) == pairs
    shuffled = pairs[:]
    random.Random(1).shuffle(shuffled)
    assert split_pairs(shuffled, 0.2, seed=3) == (train, val)
    assert split_pairs(pairs, 0.2, seed=4)[1] != val


def test_split_pairs_sizes():
    assert [len(part) for part in split_pairs(fake_pairs(2), 0.01, seed=0)] == [1, 1]
    assert [len(part) for part in split_pairs(fake_pairs(3), 0.9, seed=0)] == [1, 2]
    assert [len(part) for part in split_pairs(fake_pairs(1), 0.5, seed=0)] == [1, 0]
    assert [len(part) for part in split_pairs(fake_pairs(5), 0.0, seed=0)] == [5, 0]
    with pytest.raises(ValueError, match="val_fraction"):
        split_pairs(fake_pairs(5), 1.0, seed=0)


def test_resolve_datasets_pairs(tmp_path):
    flat = tmp_path / "flat"
    make_pair_folders(flat, names=[f"f{index}" for index in range(10)])
    train, val = resolve_datasets_pairs(flat, val_fraction=0.3, seed=1)
    assert (len(train), len(val)) == (7, 3)
    assert (train, val) == split_pairs(discover_pairs(flat)["train"], 0.3, 1)

    split = tmp_path / "split"
    make_pair_folders(split / "train", names=("t1", "t2"))
    make_pair_folders(split / "val", names=("v1",))
    assert [[pair.name for pair in part] for part in resolve_datasets_pairs(split)] == [["t1", "t2"], ["v1"]]

    held_out = tmp_path / "held_out"
    make_pair_folders(held_out / "train", names=("h1",))
    make_pair_folders(held_out / "val", names=("h2",))
    train, val = resolve_datasets_pairs(split, val_data=held_out)
    assert [pair.name for pair in train] == ["t1", "t2"] and [pair.name for pair in val] == ["h1", "h2"]
    with pytest.raises(DataLayoutError, match="--val-data path"):
        resolve_datasets_pairs(split, val_data=tmp_path / "missing")


# ---------------------------------------------------------------------------------------- dataset


def pair_on_disk(tmp_path, input_rgb8, target_rgb8, name="p"):
    save_rgb8(tmp_path / "input" / f"{name}.png", input_rgb8)
    save_rgb8(tmp_path / "target" / f"{name}.png", target_rgb8)
    return ImagePair(tmp_path / "input" / f"{name}.png", tmp_path / "target" / f"{name}.png", name)


def test_item_is_float_tensors_in_chw(tmp_path):
    rgb8 = random_rgb8(9, 13)
    sample = PairedDataset([pair_on_disk(tmp_path, rgb8, rgb8)])[0]
    assert sample["name"] == "p"
    assert sample["input"].dtype == torch.float32 and sample["input"].shape == (3, 9, 13)
    torch.testing.assert_close(sample["input"], torch.from_numpy(rgb8 / 255.0).permute(2, 0, 1).float())


def test_crop_and_augment_are_aligned(tmp_path):
    rgb8 = random_rgb8(30, 40)
    same = PairedDataset([pair_on_disk(tmp_path / "same", rgb8, rgb8)], crop=16, augment=True)
    inverted = PairedDataset([pair_on_disk(tmp_path / "inverted", rgb8, 255 - rgb8)], crop=(12, 20), augment=True)
    for seed in range(12):
        sample = same[(0, seed)]
        assert sample["input"].shape == (3, 16, 16)
        torch.testing.assert_close(sample["input"], sample["target"])
        sample = inverted[(0, seed)]
        assert sample["input"].shape[0] == 3 and sorted(sample["input"].shape[1:]) == [12, 20]
        torch.testing.assert_close(sample["target"], 1 - sample["input"], atol=1e-6, rtol=0)


def test_crop_is_a_window_of_the_image(tmp_path):
    rgb8 = random_rgb8(30, 40)
    dataset = PairedDataset([pair_on_disk(tmp_path, rgb8, rgb8)], crop=(10, 14))
    full = rgb8 / 255.0
    tops_lefts = set()
    for seed in range(10):
        crop = dataset[(0, seed)]["input"].permute(1, 2, 0).numpy()
        matches = [(top, left) for top in range(21) for left in range(27)
                   if np.allclose(full[top:top + 10, left:left + 14], crop, atol=1e-6)]
        assert len(matches) == 1
        tops_lefts.add(matches[0])
    assert len(tops_lefts) > 1


def test_small_image_is_reflect_padded_to_crop(tmp_path):
    rgb8 = random_rgb8(10, 12)
    dataset = PairedDataset([pair_on_disk(tmp_path, rgb8, rgb8)], crop=16)
    sample = dataset[(0, 5)]
    assert sample["input"].shape == (3, 16, 16) and sample["target"].shape == (3, 16, 16)
    expected = np.pad(rgb8 / 255.0, ((3, 3), (2, 2), (0, 0)), mode="reflect")
    np.testing.assert_allclose(sample["input"].permute(1, 2, 0).numpy(), expected, atol=1e-6)
    torch.testing.assert_close(sample["input"], sample["target"])


def test_augment_reaches_all_eight_variants(tmp_path):
    rgb8 = random_rgb8(4, 6)
    dataset = PairedDataset([pair_on_disk(tmp_path, rgb8, rgb8)], augment=True)
    variants = {dataset[(0, seed)]["input"].numpy().tobytes() for seed in range(200)}
    assert len(variants) == 8


def test_same_key_same_sample_and_seed_matters(tmp_path):
    rgb8 = random_rgb8(40, 40)
    dataset = PairedDataset([pair_on_disk(tmp_path, rgb8, rgb8)], crop=8, augment=True)
    torch.testing.assert_close(dataset[(0, 123)]["input"], dataset[(0, 123)]["input"])
    assert len({dataset[(0, seed)]["input"].numpy().tobytes() for seed in range(5)}) > 1


def test_center_crop_is_centred_and_clamped(tmp_path):
    rgb8 = random_rgb8(20, 31)
    dataset = PairedDataset([pair_on_disk(tmp_path, rgb8, rgb8)], center_crop=(10, 40))
    crop = dataset[0]["input"].permute(1, 2, 0).numpy()
    np.testing.assert_allclose(crop, rgb8[5:15] / 255.0, atol=1e-6)
    with pytest.raises(ValueError, match="not both"):
        PairedDataset([], crop=8, center_crop=8)
    with pytest.raises(ValueError, match="crop must be"):
        PairedDataset([], crop=0)


def test_dataset_rejects_pair_of_different_sizes(tmp_path):
    pair = pair_on_disk(tmp_path, random_rgb8(8, 8), random_rgb8(8, 9))
    with pytest.raises(ValueError, match=r"pair 'p'.*8x8 .*8x9"):
        PairedDataset([pair])[0]


def test_dataset_is_picklable(tmp_path):
    rgb8 = random_rgb8(20, 20)
    dataset = PairedDataset([pair_on_disk(tmp_path, rgb8, rgb8)], crop=8, augment=True)
    copy = pickle.loads(pickle.dumps(dataset))
    torch.testing.assert_close(copy[(0, 9)]["input"], dataset[(0, 9)]["input"])


# ---------------------------------------------------------------------------------------- loaders


def take(iterator, count):
    return [next(iterator) for _ in range(count)]


def test_sampler_resumes_exactly_across_epochs():
    num_items, batch_size = 5, 3
    uninterrupted = take(iter(ResumableSampler(num_items, batch_size, seed=7)), 40)
    for start_step in (1, 2, 4, 7):
        resumed = take(iter(ResumableSampler(num_items, batch_size, seed=7, start_step=start_step)), 10)
        assert resumed == uninterrupted[start_step * batch_size:start_step * batch_size + 10]
    indices = [index for index, _ in uninterrupted]
    for epoch in range(8):
        assert sorted(indices[epoch * num_items:(epoch + 1) * num_items]) == list(range(num_items))
    assert indices[:5] != indices[5:10]
    assert len({seed for _, seed in uninterrupted}) == 40
    assert take(iter(ResumableSampler(num_items, batch_size, seed=8)), 40) != uninterrupted


def test_sampler_rejects_bad_arguments():
    with pytest.raises(ValueError, match="at least one item"):
        ResumableSampler(0, 2, seed=0)
    with pytest.raises(ValueError, match="batch_size >= 1"):
        ResumableSampler(3, 0, seed=0)


@pytest.fixture
def crop_dataset(tmp_path):
    pairs = [pair_on_disk(tmp_path, random_rgb8(20, 24, seed=i), random_rgb8(20, 24, seed=i + 50), name=f"p{i}")
             for i in range(5)]
    return PairedDataset(pairs, crop=8, augment=True)


def test_train_batches_same_with_workers_and_after_resume(crop_dataset):
    reference = take(train_batches(crop_dataset, batch_size=2, seed=11, workers=0), 5)
    assert reference[0]["input"].shape == (2, 3, 8, 8) and len(reference[0]["name"]) == 2
    with_workers = take(train_batches(crop_dataset, batch_size=2, seed=11, workers=2), 5)
    resumed = take(train_batches(crop_dataset, batch_size=2, seed=11, start_step=3, workers=0), 2)
    for expected, batch in zip(reference, with_workers):
        assert batch["name"] == expected["name"]
        torch.testing.assert_close(batch["input"], expected["input"])
        torch.testing.assert_close(batch["target"], expected["target"])
    for expected, batch in zip(reference[3:], resumed):
        assert batch["name"] == expected["name"]
        torch.testing.assert_close(batch["input"], expected["input"])


def test_val_loader_in_order_one_by_one(tmp_path):
    pairs = [pair_on_disk(tmp_path, random_rgb8(6, 7 + i), random_rgb8(6, 7 + i), name=f"v{i}") for i in range(3)]
    batches = list(val_loader(PairedDataset(pairs), workers=0))
    assert [batch["name"] for batch in batches] == [["v0"], ["v1"], ["v2"]]
    assert [tuple(batch["input"].shape) for batch in batches] == [(1, 3, 6, 7), (1, 3, 6, 8), (1, 3, 6, 9)]


def test_center_crop_takes_the_middle_rows_and_columns(tmp_path):
    rgb8 = random_rgb8(20, 31)
    crop = PairedDataset([pair_on_disk(tmp_path, rgb8, rgb8)], center_crop=(8, 11))[0]["input"]
    np.testing.assert_allclose(crop.permute(1, 2, 0).numpy(), rgb8[6:14, 10:21] / 255.0, atol=1e-6)


def test_aligned_images_need_one_path_per_pair(tmp_path):
    pair = pair_on_disk(tmp_path, random_rgb8(8, 8), random_rgb8(8, 8))
    with pytest.raises(ValueError, match="^aligned images 'depth': 0 paths for 1 pairs$"):
        PairedDataset([pair], aligned={"depth": []})
    assert PairedDataset([pair], aligned={"depth": [pair.input]}).aligned == {"depth": [pair.input]}


@pytest.mark.parametrize("height, width", [(6, 10), (10, 6)])
def test_a_crop_larger_than_one_side_reflect_pads_only_that_side(tmp_path, height, width):
    rgb8 = random_rgb8(height, width)
    dataset = PairedDataset([pair_on_disk(tmp_path, rgb8, rgb8)], crop=8)
    pad_height, pad_width = max(8 - height, 0), max(8 - width, 0)
    padded = np.pad(rgb8, ((pad_height // 2, pad_height - pad_height // 2),
                           (pad_width // 2, pad_width - pad_width // 2), (0, 0)), mode="reflect")
    windows = [padded[top:top + 8, left:left + 8] for top in range(padded.shape[0] - 7)
               for left in range(padded.shape[1] - 7)]
    for seed in range(8):
        crop = (dataset[(0, seed)]["input"].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
        assert any(np.array_equal(crop, window) for window in windows), seed
