"""tools/bench_fastpath.py: each measurement runs at tiny sizes and prints one line per comparison."""
import re
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))
import bench_fastpath  # noqa: E402

MILLISECONDS = r"\d+\.\d+ ms"


def test_ops_times_each_kernel_pair(capsys):
    bench_fastpath.main(["ops", "--size", "8"])
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 4 + 4 + 3 + 2 + 2
    assert all(re.search(f"conv2d NCHW {MILLISECONDS}, matmul NHWC {MILLISECONDS}", line) for line in lines[:4])
    libraries = f"MKL {MILLISECONDS}, oneDNN {MILLISECONDS}"
    assert all(re.search(f"forward {libraries}; input gradient {libraries}; weight gradient {libraries}$", line)
               for line in lines[4:8])
    assert all(re.search(f"NCHW {MILLISECONDS}, channels_last {MILLISECONDS}", line) for line in lines[8:11])
    assert all(re.search(f"plain ops {MILLISECONDS}, fused {MILLISECONDS}", line) for line in lines[11:13])
    assert all(re.search(f"vector_norm {MILLISECONDS}, sum of squares {MILLISECONDS}", line) for line in lines[13:])


def test_blocks_times_the_before_file_and_every_attention_kind_against_it(capsys):
    # the current file as "before": the same weights load strictly into both, and the ratios are printed
    bench_fastpath.main(["blocks", "--size", "16", "--rounds", "1", "--before", str(ROOT / "models" / "restormer.py")])
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 3 * 2  # three block widths, forward and train
    for line in lines:
        assert re.search(r"before \d+\.\d ms \(1\.00x\), fused \d+\.\d ms \(\d+\.\d\dx\), matmul \d+\.\d ms", line)


def test_blocks_needs_the_before_file():
    with pytest.raises(SystemExit):
        bench_fastpath.main(["blocks"])


def test_convnets_compare_nchw_with_channels_last_for_nafnet_and_darkir(capsys):
    bench_fastpath.main(["convnets", "--size", "16", "--rounds", "1"])
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in lines] == ["nafnet", "darkir"]
    assert all(line.count("channels_last") == 2 for line in lines)
