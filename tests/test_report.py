"""report.py on two tiny runs: the table (sorted, parameters, resumed wall time), curves and grids."""
import json

import cv2
import numpy as np
import pytest
import torch

import report
from models.restormer import Restormer
from tests.conftest import LocalConvNet, save_model_checkpoint

RESTORMER_KWARGS = dict(dim=8, num_blocks=[1, 1, 1, 1], num_refinement_blocks=1, heads=[1, 1, 1, 1])


def write_run(run_dir, model, kwargs, data, val_psnrs, script, resumed=False):
    """A run folder as a training script leaves it: config.json, metrics.jsonl, best.pt."""
    run_dir.mkdir(parents=True)
    config = {"script": script, "data": str(data), "val_data": None, "val_fraction": 0.1, "seed": 0}
    save_model_checkpoint(run_dir / "best.pt", model, kwargs, **config)
    (run_dir / "config.json").write_text(json.dumps({**config, **torch.load(
        run_dir / "best.pt", weights_only=True)["config"]}))
    records = [{"step": 0, "split": "identity", "time": 0.5, "l1": 0.24, "psnr": 11.27, "ssim": 0.71}]
    clock = 0.5
    for index, psnr in enumerate(val_psnrs, start=1):
        if resumed and index == 2:
            clock = 0.0  # a resumed process restarts the logged clock
        clock += 10.0
        records.append({"step": 10 * index, "split": "train", "time": clock, "loss": 1.0 / index, "lr": 1e-3,
                        "grad_norm": 1.0, "images_per_s": 4.0 * index})
        records.append({"step": 10 * index, "split": "val", "time": clock + 1.0, "l1": 0.3 - psnr / 100,
                        "psnr": psnr, "ssim": psnr / 30})
        clock += 1.0
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    return run_dir


@pytest.fixture
def two_runs(tmp_path, tiny_pairs):
    torch.manual_seed(0)
    conv = write_run(tmp_path / "runs" / "conv", LocalConvNet(), {}, tiny_pairs, [14.0, 15.5, 15.0], "train_conv")
    restormer = write_run(tmp_path / "runs" / "restormer", Restormer(**RESTORMER_KWARGS), RESTORMER_KWARGS,
                          tiny_pairs, [16.0, 17.25], "train_restormer_512_combined_loss", resumed=True)
    (tmp_path / "runs" / "notes").mkdir()
    return conv, restormer


def test_report_table_curves_and_grids(two_runs, tmp_path, capsys):
    out = tmp_path / "report"
    report.main([str(p) for p in sorted((tmp_path / "runs").iterdir())] + ["--out", str(out), "--images", "2",
                                                                          "--device", "cpu", "--tile", "0"])
    assert "skipped" in capsys.readouterr().out  # the 'notes' folder is not a run
    text = (out / "report.md").read_text()
    rows = [line for line in text.splitlines() if line.startswith("| ") and not line.startswith("| #")]
    assert len(rows) == 2
    first, second = ([cell.strip() for cell in row.strip("|").split("|")] for row in rows)
    # best first; Restormer: best of [16.0, 17.25], 2 segments of 11 s = 22 s; conv: best 15.5 at step 20
    restormer_parameters = sum(p.numel() for p in Restormer(**RESTORMER_KWARGS).parameters())
    assert first[:7] == ["1", "restormer", "`train_restormer_512_combined_loss`", "Restormer (dim 8)",
                         report._count(restormer_parameters), "20", "0.1275"]
    assert first[7:] == ["17.25", "0.5750", "22s", "6.0"]
    assert second[:7] == ["2", "conv", "`train_conv`", "LocalConvNet", "1,027", "30", "0.1450"]
    assert second[7:10] == ["15.50", "0.5167", "34s"]
    assert "PSNR 11.27 dB" in text and "![training curves](curves.png)" in text

    curves = cv2.imread(str(out / "curves.png"))
    assert curves.shape[1] == 1120
    for colour in report.RUN_COLORS[:2]:  # both runs' lines are drawn
        assert (np.abs(curves.astype(int) - colour).sum(axis=2) < 30).sum() > 100

    grids = sorted(out.glob("grid_*.png"))
    assert [g.name for g in grids] == ["grid_1_000.png", "grid_2_001.png"] and f"]({grids[0].name})" in text
    grid = cv2.imread(str(grids[0]))
    # input | 2 runs | target, 256 px cells and 6 px gaps; two rows of cell + label and caption strips
    assert grid.shape == (2 * (256 + 52), 4 * 256 + 3 * 6, 3)
    heat_of_first_run = grid[256 + 52 + 26: 2 * 256 + 52 + 26, 256 + 6: 2 * 256 + 6]
    assert heat_of_first_run.std() > 1  # an error map, not a blank cell


def test_runs_are_required(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no run folders given"):
        report.main([str(tmp_path / "empty"), "--out", str(tmp_path / "report")])


def test_cross_validation_folds_are_runs(tmp_path, tiny_pairs):
    for fold, psnr in (("fold_1", 12.0), ("fold_2", 13.0)):
        write_run(tmp_path / "cv" / fold, LocalConvNet(), {}, tiny_pairs, [psnr], "train_darkir_cv")
    runs = report.sort_best_first(report.find_runs([tmp_path / "cv"]))
    assert [run.name for run in runs] == ["fold_2", "fold_1"]
