"""The decoded-pixel cache: same pixels as direct decoding, rebuilt when a photo changes, shared by
concurrent workers, and never read half-written."""

import argparse
import multiprocessing
import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from PIL import ExifTags, Image

from data.build import pixel_cache_from_args
from data.dataset import PairedDataset
from data.io import ImageReadError, read_image, read_pixels
from data.pairs import ImagePair
from data.pixel_cache import PixelCache

REPO = Path(__file__).resolve().parents[1]


def random_rgb8(height, width, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def write_png8(path, rgb8):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rgb8).save(path)
    return path


def write_png16(path, seed=0):
    path.parent.mkdir(parents=True, exist_ok=True)
    bgr16 = np.random.default_rng(seed).integers(0, 65536, (11, 17, 3), dtype=np.uint16)
    assert cv2.imwrite(str(path), bgr16)
    return path


def write_rotated_jpeg(path):
    exif = Image.Exif()
    exif[ExifTags.Base.Orientation] = 6
    Image.fromarray(random_rgb8(10, 14)).save(path, exif=exif.tobytes(), quality=95)
    return path


def entries(folder):
    return sorted(path.name for path in Path(folder).iterdir())


@pytest.mark.parametrize("write", [lambda p: write_png8(p / "a.png", random_rgb8(9, 13)),
                                   lambda p: write_png16(p / "b.png"),
                                   lambda p: write_png16(p / "c.tif"),
                                   lambda p: write_rotated_jpeg(p / "d.jpg")],
                         ids=["png8", "png16", "tiff16", "jpeg-exif-rotated"])
def test_cached_pixels_equal_direct_decoding(tmp_path, write):
    photo = write(tmp_path)
    cache = PixelCache(tmp_path / "cache")
    for _ in range(2):  # the miss (decode + store), then the hit (memory map)
        pixels = cache.read(photo)
        direct = read_pixels(photo)
        assert pixels.dtype == direct.dtype and pixels.dtype in (np.uint8, np.uint16)
        np.testing.assert_array_equal(pixels, direct)
    assert isinstance(pixels, np.memmap)
    if photo.suffix == ".jpg":
        assert pixels.shape == (14, 10, 3)  # orientation 6 turns the stored 10x14 upright


def test_dataset_samples_are_the_same_with_and_without_cache(tmp_path):
    pairs = [ImagePair(write_png8(tmp_path / "in" / "x.png", random_rgb8(40, 50, 1)),
                       write_png8(tmp_path / "tar" / "x.png", random_rgb8(40, 50, 2)), "x"),
             ImagePair(write_png16(tmp_path / "in" / "s.png", 3), write_png16(tmp_path / "tar" / "s.png", 4), "s")]
    cache = PixelCache(tmp_path / "cache")
    for options in (dict(crop=16, augment=True), dict(crop=(24, 20)), dict(center_crop=12), {}):
        plain, cached = PairedDataset(pairs, **options), PairedDataset(pairs, cache=cache, **options)
        for key in [(0, 5), (1, 6), (0, 7)]:  # the 11x17 photo is reflect-padded up to the 24x20 crop
            a, b = plain[key], cached[key]
            assert b["input"].dtype == torch.float32
            torch.testing.assert_close(a["input"], b["input"], rtol=0, atol=0)
            torch.testing.assert_close(a["target"], b["target"], rtol=0, atol=0)
    whole = cached[(1, 0)]["input"]
    np.testing.assert_array_equal(whole.permute(1, 2, 0).numpy(), read_image(pairs[1].input))


def test_changed_photo_is_decoded_again_and_its_old_entry_removed(tmp_path):
    photo = write_png8(tmp_path / "p.png", random_rgb8(8, 8, 0))
    cache = PixelCache(tmp_path / "cache")
    np.testing.assert_array_equal(cache.read(photo), random_rgb8(8, 8, 0))
    first_entry = cache.entry_path(photo)
    write_png8(photo, random_rgb8(8, 8, 1))
    stat = photo.stat()
    os.utime(photo, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))  # a coarse-mtime file system
    np.testing.assert_array_equal(cache.read(photo), random_rgb8(8, 8, 1))
    assert cache.entry_path(photo) != first_entry
    assert entries(cache.folder) == [cache.entry_path(photo).name]


def _read_in_worker(arguments):
    folder, paths = arguments
    cache = PixelCache(folder)
    return [np.array(cache.read(path)) for path in paths]


def test_concurrent_workers_share_one_complete_entry_per_photo(tmp_path):
    paths = [write_png8(tmp_path / f"{i}.png", random_rgb8(300, 200, i)) for i in range(2)]
    folder = tmp_path / "cache"
    context = multiprocessing.get_context("fork")
    with context.Pool(4) as pool:  # four workers decode and store the same two photos at once
        results = pool.map(_read_in_worker, [(folder, paths)] * 4)
    for result in results:
        for path, pixels in zip(paths, result):
            np.testing.assert_array_equal(pixels, read_pixels(path))
    cache = PixelCache(folder)
    assert entries(folder) == sorted(cache.entry_path(path).name for path in paths)  # no .tmp left behind
    for path in paths:
        np.testing.assert_array_equal(np.load(cache.entry_path(path)), read_pixels(path))


KILLED_WRITER = """
import os, signal, sys
import numpy as np
import data.pixel_cache as pixel_cache

def save_half_then_die(path, array):
    with open(path, "wb") as handle:
        handle.write(array.tobytes()[: array.nbytes // 2])
        handle.flush()
        os.kill(os.getpid(), signal.SIGKILL)

pixel_cache.np.save = save_half_then_die
pixel_cache.PixelCache(sys.argv[1]).read(sys.argv[2])
"""


def test_killed_writer_leaves_no_entry_that_is_read(tmp_path):
    photo = write_png8(tmp_path / "p.png", random_rgb8(64, 48))
    folder = tmp_path / "cache"
    killed = subprocess.run([sys.executable, "-c", KILLED_WRITER, str(folder), str(photo)], cwd=REPO,
                            env={**os.environ, "PYTHONPATH": str(REPO)}, capture_output=True)
    assert killed.returncode == -9, killed.stderr.decode()
    cache = PixelCache(folder)
    assert not cache.entry_path(photo).exists() and len(entries(folder)) == 1  # only the dead writer's .tmp
    np.testing.assert_array_equal(cache.read(photo), read_pixels(photo))


def test_garbled_entry_is_rebuilt(tmp_path):
    photo = write_png8(tmp_path / "p.png", random_rgb8(32, 32))
    cache = PixelCache(tmp_path / "cache")
    cache.read(photo)
    entry = cache.entry_path(photo)
    entry.write_bytes(entry.read_bytes()[:200])  # truncated by something other than our writer
    np.testing.assert_array_equal(cache.read(photo), read_pixels(photo))


def test_missing_or_corrupt_photo_keeps_the_one_line_error(tmp_path):
    cache = PixelCache(tmp_path / "cache")
    with pytest.raises(ImageReadError, match="cannot read image '.*gone.png'"):
        cache.read(tmp_path / "gone.png")
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n" + b"0" * 40)
    with pytest.raises(ImageReadError) as error:
        cache.read(broken)
    assert "broken.png" in str(error.value) and "\n" not in str(error.value)
    assert entries(cache.folder) == []


def test_cache_flag_uses_rehdr_cache_unless_a_folder_is_given(tmp_path, monkeypatch):
    monkeypatch.setenv("REHDR_CACHE", str(tmp_path / "rehdr"))
    args = argparse.Namespace(cache=True, cache_dir=None)
    assert pixel_cache_from_args(args).folder == tmp_path / "rehdr" / "pixels"
    args.cache_dir = str(tmp_path / "elsewhere")
    assert pixel_cache_from_args(args).folder == tmp_path / "elsewhere"
    assert pixel_cache_from_args(argparse.Namespace(cache=False, cache_dir=None)) is None
