"""tools/bench_enhance.py: tile counts match the tiled inference; a region run extrapolates by them;
the pipeline mode counts the forwards inside enhance."""

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))
import bench_enhance  # noqa: E402
from utils.tiling import tiled_forward  # noqa: E402


@pytest.mark.parametrize("height, width, tile, overlap", [(2192, 3296, 512, 32), (112, 160, 64, 16), (40, 40, 64, 16)])
def test_tile_count_equals_the_tiles_tiled_forward_runs(height, width, tile, overlap):
    calls = []

    def count(batch):
        calls.append(batch.shape[0])
        return batch[:, :3]

    tiled_forward(count, torch.zeros(1, 3, height, width), tile=tile, overlap=overlap, batch_size=1)
    assert bench_enhance.tile_count(height, width, tile, overlap) == len(calls)
    assert bench_enhance.tile_count(2192, 3296, 512, 32) == 35


def test_region_run_of_each_architecture_builds_and_extrapolates_by_tile_count():
    for arch in ("nafnet", "hat"):
        results = bench_enhance.main(["--arch", arch, "--model", "tiny", "--size", "160x112", "--region", "112x64",
                                      "--tiles", "64", "--overlap", "16", "--threads", "1"])
        (result,) = results
        assert (result["region_tiles"], result["photo_tiles"]) == (2, 6)
        assert result["extrapolated_s"] == pytest.approx(result["enhance_s"] * 3)
        assert result["extrapolated_cpu_s"] == pytest.approx(result["enhance_cpu_s"] * 3)
        assert result["enhance_s"] > 0 and result["peak_rss_gib"] > 0


def test_region_larger_than_photo_is_refused():
    with pytest.raises(SystemExit):
        bench_enhance.main(["--size", "64x64", "--region", "128x64", "--model", "tiny"])


def test_pipeline_mode_times_enhance_and_the_network_forwards_inside_it():
    result = bench_enhance.main(["--pipeline", "--arch", "nafnet", "--model", "tiny", "--size", "96x64",
                                 "--tiles", "32", "--overlap", "8", "--rounds", "1", "--threads", "1"])
    forwards = bench_enhance.tile_count(64, 96, 32, 8)
    assert result["forwards"] == forwards
    assert result["pixel_ratio"] == pytest.approx(forwards * 32 * 32 / (96 * 64))
    assert 0 < result["inside_s"] <= result["enhance_s"] and result["bare_s"] > 0
