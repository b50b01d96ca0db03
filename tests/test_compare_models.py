"""tools/compare_models.py: the quick comparison trains, scores and tabulates each model once."""

import json
import math
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))
import compare_models  # noqa: E402


def test_quick_comparison_tabulates_each_model_and_reuses_finished_runs(tiny_pairs, tmp_path):
    out = tmp_path / "runs"
    argv = ["--quick", "--out", str(out), "--data", str(tiny_pairs), "--models", "restormer", "nafnet",
            "--markdown", str(out / "table.md")]
    table = compare_models.main(argv)
    assert (out / "table.md").read_text().strip() == table
    for name in ("restormer", "nafnet"):
        result = json.loads((out / f"{name}_s0" / "compare.json").read_text())
        assert result["params"] > 0 and result["train_step_s"] > 0 and result["peak_rss_mb"] > 100
        assert math.isfinite(result["psnr"]) and 0 < result["ssim"] <= 1
        assert f"| {name} (`{result['config']}`) | {result['params'] / 1e6:.2f} | {result['psnr']:.2f} |" in table
    # a finished run is read back, not trained again
    log = out / "restormer_s0" / "train.log"
    log.write_text("kept")
    assert compare_models.main(argv) == table and log.read_text() == "kept"


def test_timing_steps_run_measures_speed_and_leaves_quality_empty(tiny_pairs, tmp_path):
    table = compare_models.main(["--quick", "--timing-steps", "2", "--out", str(tmp_path), "--data", str(tiny_pairs),
                                 "--models", "restormer"])
    run_dir = tmp_path / "restormer_s0_t2"
    result = json.loads((run_dir / "compare.json").read_text())
    assert result["train_step_s"] > 0 and result["timing_steps"] == 2 and not (run_dir / "eval").exists()
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert max(r.get("step", 0) for r in records) == 2
    assert "2 steps: timing only) |" in table and "| - | - | - | - |" in table
