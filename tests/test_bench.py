"""tools/bench.py: the quick run produces its table with sane numbers; FLOPs match a hand count."""

import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))
import bench  # noqa: E402


def test_flops_of_one_convolution_equal_the_hand_count():
    conv = torch.nn.Conv2d(3, 8, kernel_size=3, padding=1)
    # one multiply and one add per weight per output pixel: 2 * C_out * C_in * k * k * H * W
    assert bench.count_flops(conv, torch.rand(2, 3, 16, 20)) == 2 * 8 * 3 * 3 * 3 * 16 * 20 * 2


def test_cpu_peak_times_both_mkl_and_onednn_matmuls(monkeypatch):
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as profiler:
        peak = bench.peak_matmul_flops(torch.device("cpu"), torch.float32, 64, repeats=2)
    names = [event.name for event in profiler.events()]
    # one untimed warm-up round and two timed ones, each kernel once per round
    assert names.count("aten::mm") == 3 and names.count("mkldnn::_linear_pointwise") == 3
    assert peak > 0
    monkeypatch.setattr(torch.backends.mkldnn, "enabled", False)
    with profile(activities=[ProfilerActivity.CPU]) as profiler:
        bench.peak_matmul_flops(torch.device("cpu"), torch.float32, 64, repeats=2)
    assert "mkldnn::_linear_pointwise" not in [event.name for event in profiler.events()]


def test_quick_bench_writes_table_and_json_with_positive_figures(tmp_path):
    report = bench.main(["--quick", "--models", "restormer", "dat", "--json", str(tmp_path / "b.json"),
                         "--markdown", str(tmp_path / "b.md")])
    assert json.loads((tmp_path / "b.json").read_text())["models"] == report["models"]
    table = (tmp_path / "b.md").read_text()
    assert "| restormer |" in table and "| dat |" in table and report["machine"] in table
    for row in report["models"]:
        assert row["train_step_s"] > 0 and row["images_per_s"] > 0 and row["forward_s_per_mp"] > 0
        assert row["peak_memory_mb"] > 0 and row["forward_gflop"] > 0 and 0 < row["fraction_of_peak"]
    loader = report["loader"]
    assert loader["decode_per_sample"] > 0 and loader["pixel_cache"] > 0 and "loader" in table.lower()
