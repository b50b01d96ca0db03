"""Tests for the built-in demo dataset (data/demo.py): layout, determinism, caching, the task it poses."""
import json
import os
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
from skimage.metrics import peak_signal_noise_ratio

import data.demo as demo
from data.demo import DEMO_VERSION, ensure_demo_data, render_scene

SIZE = (64, 96)
SMALL = {"num_train": 4, "num_val": 2, "size": SIZE}


def _read_rgb(path):
    image = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    assert image is not None, path
    return image[..., ::-1]


def _pngs(root):
    return sorted(p.relative_to(root) for p in root.rglob("*.png"))


@pytest.fixture(scope="module")
def small_set(tmp_path_factory):
    return ensure_demo_data(tmp_path_factory.mktemp("demo") / "set", seed=0, **SMALL)


def test_layout_names_shapes_and_manifest(small_set):
    expected = sorted(
        Path(split, kind, f"{i:04d}.png")
        for split, count in (("train", 4), ("val", 2)) for kind in ("input", "target") for i in range(count))
    assert _pngs(small_set) == expected
    for split in ("train", "val"):
        for name in os.listdir(small_set / split / "input"):
            inp = _read_rgb(small_set / split / "input" / name)
            tgt = _read_rgb(small_set / split / "target" / name)
            assert inp.dtype == np.uint8 and tgt.dtype == np.uint8
            assert inp.shape == tgt.shape == (*SIZE, 3)
            # Both use a good part of the 8-bit range (not blank, not saturated everywhere).
            for image in (inp, tgt):
                assert image.min() < 40 and image.max() > 200 and 30 < image.mean() < 220
    manifest = json.loads((small_set / "manifest.json").read_text())
    assert manifest == {"demo_version": DEMO_VERSION, "seed": 0, "num_train": 4, "num_val": 2, "size": list(SIZE)}


def test_same_seed_is_byte_identical_and_other_seed_differs(small_set, tmp_path):
    again = ensure_demo_data(tmp_path / "again", seed=0, **SMALL)
    other = ensure_demo_data(tmp_path / "other", seed=1, **SMALL)
    for rel in _pngs(small_set):
        assert (small_set / rel).read_bytes() == (again / rel).read_bytes(), rel
        assert (small_set / rel).read_bytes() != (other / rel).read_bytes(), rel


def test_input_windows_are_clipped_and_target_recovers_them(small_set):
    blown_but_recovered = []
    for split in ("train", "val"):
        for name in os.listdir(small_set / split / "input"):
            inp = _read_rgb(small_set / split / "input" / name)
            tgt = _read_rgb(small_set / split / "target" / name)
            blown_but_recovered.append(((inp == 255).all(-1) & (tgt.max(-1) < 235)).mean())
    assert np.mean(blown_but_recovered) > 0.005


def test_render_scene_radiance_and_window_recovery():
    input_in_windows, target_in_windows = [], []
    for i in range(4):
        hdr, inp, tgt = render_scene(np.random.default_rng([7, 0, i]), SIZE)
        assert hdr.dtype == np.float32 and hdr.shape == (*SIZE, 3) and np.isfinite(hdr).all() and hdr.min() >= 0
        assert inp.dtype == tgt.dtype == np.uint8 and inp.shape == tgt.shape == (*SIZE, 3)
        lum = hdr @ np.array([0.2126, 0.7152, 0.0722], np.float32)
        # Metered to mid-grey; the view outside is at least 10x brighter than the room.
        assert 0.1 < np.median(lum) < 0.3
        windows = lum > 4.0
        assert windows.any()
        input_in_windows.append(inp[windows].mean(-1))
        target_in_windows.append(tgt[windows].mean(-1))
    input_in_windows = np.concatenate(input_in_windows)
    target_in_windows = np.concatenate(target_in_windows)
    assert (input_in_windows >= 235).mean() > 0.85  # blown out in the camera frame
    assert target_in_windows.mean() < input_in_windows.mean() - 10  # pulled back in the edit
    assert target_in_windows.std() > 2 * input_in_windows.std()  # with the exterior's detail


def test_identity_baseline_is_poor(small_set):
    scores = []
    for split in ("train", "val"):
        for name in os.listdir(small_set / split / "input"):
            scores.append(peak_signal_noise_ratio(_read_rgb(small_set / split / "target" / name),
                                                  _read_rgb(small_set / split / "input" / name), data_range=255))
    assert np.mean(scores) < 25.0


def test_second_call_does_not_regenerate(small_set):
    before = {rel: (small_set / rel).stat().st_mtime_ns for rel in _pngs(small_set)}
    manifest_mtime = (small_set / "manifest.json").stat().st_mtime_ns
    assert ensure_demo_data(small_set, seed=0, **SMALL) == small_set
    assert {rel: (small_set / rel).stat().st_mtime_ns for rel in _pngs(small_set)} == before
    assert (small_set / "manifest.json").stat().st_mtime_ns == manifest_mtime


def test_changed_parameters_regenerate(tmp_path):
    root = ensure_demo_data(tmp_path / "set", seed=0, num_train=3, num_val=1, size=(40, 48))
    ensure_demo_data(root, seed=0, num_train=2, num_val=1, size=(48, 40))
    assert json.loads((root / "manifest.json").read_text())["num_train"] == 2
    assert sorted(p.name for p in (root / "train" / "input").iterdir()) == ["0000.png", "0001.png"]
    assert _read_rgb(root / "val" / "target" / "0000.png").shape == (48, 40, 3)
    assert [p.name for p in tmp_path.iterdir()] == ["set"]  # the outdated copy was removed


def test_interrupted_generation_leaves_no_dataset(tmp_path, monkeypatch):
    real_render = demo.render_scene
    calls = []

    def render_then_interrupt(rng, size):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real_render(rng, size)

    monkeypatch.setattr(demo, "render_scene", render_then_interrupt)
    with pytest.raises(KeyboardInterrupt):
        ensure_demo_data(tmp_path / "set", seed=0, **SMALL)
    assert list(tmp_path.iterdir()) == []  # neither ROOT nor the temporary folder
    monkeypatch.setattr(demo, "render_scene", real_render)
    root = ensure_demo_data(tmp_path / "set", seed=0, **SMALL)
    assert len(_pngs(root)) == 12


def test_leftover_partial_folders_are_ignored_and_stale_ones_removed(tmp_path):
    stale = tmp_path / ".set.partial-deadbeef"
    (stale / "train" / "input").mkdir(parents=True)
    (stale / "train" / "input" / "0000.png").write_bytes(b"half-written")
    (stale / "manifest.json").write_text(json.dumps(demo._manifest(0, 4, 2, SIZE)))
    old = time.time() - 2 * demo.STALE_PARTIAL_SECONDS
    os.utime(stale, (old, old))
    live = tmp_path / ".set.partial-cafe"  # maybe another process still writing: left alone
    live.mkdir()
    root = ensure_demo_data(tmp_path / "set", seed=0, **SMALL)
    assert len(_pngs(root)) == 12
    assert _read_rgb(root / "train" / "input" / "0000.png").shape == (*SIZE, 3)
    assert not stale.exists() and live.exists()


def test_default_root_follows_rehdr_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("REHDR_CACHE", str(tmp_path / "cache"))
    root = ensure_demo_data(seed=3, num_train=1, num_val=1, size=(32, 32))
    assert root == tmp_path / "cache" / f"demo-v{DEMO_VERSION}-seed3"
    assert (root / "val" / "target" / "0000.png").is_file()


def test_bad_arguments_raise_clear_errors(tmp_path):
    with pytest.raises(ValueError, match="at least 32x32"):
        ensure_demo_data(tmp_path / "a", size=(16, 64))
    with pytest.raises(ValueError, match=r"\(height, width\)"):
        render_scene(np.random.default_rng(0), size=64)
    with pytest.raises(ValueError, match="num_train >= 1"):
        ensure_demo_data(tmp_path / "a", num_train=0)
    with pytest.raises(ValueError, match="non-negative"):
        ensure_demo_data(tmp_path / "a", seed=-1)
    mine = tmp_path / "photos"
    mine.mkdir()
    (mine / "holiday.jpg").write_bytes(b"x")
    with pytest.raises(FileExistsError, match="not a demo dataset"):
        ensure_demo_data(mine, num_train=1, num_val=0, size=(32, 32))
    assert (mine / "holiday.jpg").read_bytes() == b"x"


def test_target_bytes_do_not_depend_on_opencv_thread_count():
    hdr, _, _ = render_scene(np.random.default_rng([4, 0, 2]), SIZE)
    saved = cv2.getNumThreads()
    try:
        targets = []
        for threads in (1, 4):
            cv2.setNumThreads(threads)
            targets.append(demo.professional_target(hdr))
            assert cv2.getNumThreads() == threads  # restored after the single-threaded fusion
    finally:
        cv2.setNumThreads(saved)
    np.testing.assert_array_equal(targets[0], targets[1])
