"""The window-attention pieces HAT, DAT and MambaIR share (models/windows.py): window partition and
merge, the Swin shifted-window mask and its per-size cache, stochastic depth, the upsampler."""
import pytest
import torch
import torch.nn as nn

from models.windows import (MASKED_LOGIT, DropPath, MaskCache, Upsample, drop_path_or_identity, shifted_window_mask,
                            window_merge, window_partition)


def windows_by_slicing(x, window_h, window_w):
    """(B, H, W, C) cut into windows by plain slicing, image by image, windows in row-major order."""
    batch, height, width, channels = x.shape
    return torch.stack([x[b, top:top + window_h, left:left + window_w].reshape(-1, channels)
                        for b in range(batch)
                        for top in range(0, height, window_h)
                        for left in range(0, width, window_w)])


def official_swin_mask(height, width, window_h, window_w, shift_h, shift_w):
    """The official Swin construction: region ids by the slices (0, -window), (-window, -shift),
    (-shift, None) per shifted axis (one region on an axis without shift), then 0 between tokens of
    one region and -100 between tokens of different regions, window by window."""
    def slices(window, shift):
        return (slice(0, -window), slice(-window, -shift), slice(-shift, None)) if shift else (slice(None),)

    regions = torch.zeros(1, height, width, 1)
    region = 0
    for rows in slices(window_h, shift_h):
        for cols in slices(window_w, shift_w):
            regions[:, rows, cols, :] = region
            region += 1
    ids = windows_by_slicing(regions, window_h, window_w).squeeze(-1)
    differences = ids.unsqueeze(1) - ids.unsqueeze(2)
    return differences.masked_fill(differences != 0, -100.0).masked_fill(differences == 0, 0.0)


@pytest.mark.parametrize("height, width, window_h, window_w", [(8, 6, 4, 2), (6, 12, 3, 4), (4, 4, 4, 4)])
def test_partition_cuts_row_major_windows_and_merge_inverts_it(height, width, window_h, window_w):
    x = torch.rand(2, height, width, 5)
    windows = window_partition(x, window_h, window_w)
    assert torch.equal(windows, windows_by_slicing(x, window_h, window_w))
    merged = window_merge(windows, window_h, window_w, height, width)
    assert merged.shape == x.shape and torch.equal(merged, x)


@pytest.mark.parametrize("height, width, window_h, window_w, shift_h, shift_w", [
    (8, 8, 4, 4, 2, 2),  # HAT: square windows shifted by half
    (8, 12, 4, 2, 2, 1),  # DAT: rectangular windows
    (8, 12, 2, 4, 1, 3),  # shifts that are not half the window
    (8, 8, 4, 4, 2, 0),  # one shifted axis
    (8, 8, 4, 4, 0, 2),
])
def test_shifted_window_mask_equals_the_official_region_construction(height, width, window_h, window_w, shift_h,
                                                                     shift_w):
    mask = shifted_window_mask(height, width, window_h, window_w, shift_h, shift_w)
    expected = official_swin_mask(height, width, window_h, window_w, shift_h, shift_w)
    assert mask.dtype == torch.float32 and mask.shape == expected.shape
    assert torch.equal(mask, expected)
    assert set(mask.unique().tolist()) == {MASKED_LOGIT, 0.0} and MASKED_LOGIT == -100.0


def test_unshifted_mask_masks_nothing():
    assert torch.equal(shifted_window_mask(8, 8, 4, 4, 0, 0), torch.zeros(4, 16, 16))


def counting_builder(calls):
    def build(height, width):
        calls.append((height, width))
        return torch.full((height, width), float(height * 100 + width))
    return build


def test_mask_cache_returns_the_same_tensor_for_the_same_size_and_device():
    calls = []
    cache = MaskCache(counting_builder(calls))
    first = cache(8, 8, torch.device("cpu"))
    assert cache(8, 8, torch.device("cpu")) is first
    other = cache(8, 16, torch.device("cpu"))
    assert other is not first and other.shape == (8, 16) and first.shape == (8, 8)
    assert calls == [(8, 8), (8, 16)]


def test_mask_cache_builds_anew_on_another_device():
    calls = []
    cache = MaskCache(counting_builder(calls))
    on_cpu = cache(8, 8, torch.device("cpu"))
    on_meta = cache(8, 8, torch.device("meta"))
    assert on_cpu.device.type == "cpu" and on_meta.device.type == "meta"
    assert cache(8, 8, torch.device("cpu")) is on_cpu
    assert calls == [(8, 8), (8, 8)]


def test_mask_cache_moves_every_mask_of_a_tuple_to_the_device():
    cache = MaskCache(lambda height, width: (torch.zeros(height, width), torch.ones(width, height)))
    masks = cache(4, 8, torch.device("meta"))
    assert isinstance(masks, tuple) and [m.device.type for m in masks] == ["meta", "meta"]
    assert [tuple(m.shape) for m in masks] == [(4, 8), (8, 4)]


def test_mask_cache_drops_the_oldest_entry_beyond_max_entries():
    calls = []
    cache = MaskCache(counting_builder(calls), max_entries=2)
    for size in [(1, 1), (2, 2), (1, 1), (3, 3), (2, 2), (1, 1)]:
        cache(*size, torch.device("cpu"))
    # (3, 3) evicts (1, 1), the oldest; (2, 2) is still held, (1, 1) is built again (evicting (2, 2))
    assert calls == [(1, 1), (2, 2), (3, 3), (1, 1)]
    assert len(cache.entries) == 2


def test_mask_cache_holds_eight_sizes_by_default():
    calls = []
    cache = MaskCache(counting_builder(calls))
    for side in range(1, 9):
        cache(side, side, torch.device("cpu"))
    cache(1, 1, torch.device("cpu"))
    assert len(calls) == 8  # all eight still cached
    cache(9, 9, torch.device("cpu"))  # a ninth size evicts the oldest, (1, 1)
    cache(1, 1, torch.device("cpu"))
    assert calls[-2:] == [(9, 9), (1, 1)] and len(cache.entries) == 8


def test_drop_path_is_the_identity_in_eval_and_at_zero():
    x = torch.rand(4, 3, 2, 2)
    assert torch.equal(DropPath(0.5).eval()(x), x)
    assert torch.equal(DropPath(0.0).train()(x), x)
    assert torch.equal(DropPath().train()(x), x)  # the default drops nothing


def test_drop_path_drops_whole_samples_and_scales_the_kept_ones_by_one_over_keep():
    torch.manual_seed(0)
    x = torch.rand(64, 3, 2, 2) + 0.5
    out = DropPath(0.25).train()(x)
    dropped = (out == 0).flatten(1).all(1)
    kept = ~dropped
    assert 0 < dropped.sum() < 64
    assert torch.equal(out[dropped], torch.zeros_like(out[dropped]))
    torch.testing.assert_close(out[kept], x[kept] / 0.75, rtol=1e-6, atol=0)


def test_drop_path_keeps_the_expectation():
    torch.manual_seed(0)
    out = DropPath(0.5).train()(torch.ones(20000, 1))
    assert abs(out.mean().item() - 1.0) < 0.03
    assert set(out.unique().tolist()) == {0.0, 2.0}


def test_drop_path_at_one_drops_every_sample_without_nan():
    x = torch.rand(4, 3, 2, 2)
    assert torch.equal(DropPath(1.0).train()(x), torch.zeros_like(x))


def test_drop_path_or_identity_builds_drop_path_only_for_positive_rates():
    assert isinstance(drop_path_or_identity(0.0), nn.Identity)
    module = drop_path_or_identity(0.1)
    assert isinstance(module, DropPath) and module.drop_prob == 0.1
    module = drop_path_or_identity(1.0)
    assert isinstance(module, DropPath) and module.drop_prob == 1.0


def conv_layout(module):
    return [(type(m).__name__, m.in_channels, m.out_channels, m.kernel_size, m.stride, m.padding)
            if isinstance(m, nn.Conv2d) else (type(m).__name__, m.upscale_factor) for m in module]


@pytest.mark.parametrize("scale, layout", [
    (1, []),
    (2, [("Conv2d", 4, 16, (3, 3), (1, 1), (1, 1)), ("PixelShuffle", 2)]),
    (4, [("Conv2d", 4, 16, (3, 3), (1, 1), (1, 1)), ("PixelShuffle", 2)] * 2),
    (3, [("Conv2d", 4, 36, (3, 3), (1, 1), (1, 1)), ("PixelShuffle", 3)]),
])
def test_upsample_has_the_official_layer_layout_and_scales_the_map(scale, layout):
    upsample = Upsample(scale, 4)
    assert conv_layout(upsample) == layout
    x = torch.rand(1, 4, 5, 7)
    with torch.no_grad():
        out = upsample(x)
        assert out.shape == (1, 4, 5 * scale, 7 * scale)
        if scale == 3:  # one 3x3 conv to 9 * num_feat, then the shuffle
            conv = upsample[0]
            expected = torch.pixel_shuffle(torch.conv2d(x, conv.weight, conv.bias, padding=1), 3)
            assert torch.equal(out, expected)


@pytest.mark.parametrize("scale", [5, 6, 12])
def test_upsample_rejects_other_scales(scale):
    with pytest.raises(ValueError, match=rf"upscale {scale} is not supported \(1, 2\*\*n or 3\)"):
        Upsample(scale, 4)
