"""evaluate.py: numbers against scikit-image, region masks, the three modes, pair matching and bad files."""
import csv
import math

import numpy as np
import pytest
import torch
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

import evaluate
from data.io import read_image, write_image
from utils.metrics import masked_psnr


def photo_triplet(seed, height=48, width=64):
    """(input, prediction, target) HxWx3 float32 photos with a blown-out window and a dark corner."""
    rng = np.random.default_rng(seed)
    target = rng.uniform(0.2, 0.8, (height, width, 3)).astype(np.float32)
    inp = np.clip(target * 0.7, 0, 1)
    inp[: height // 3, : width // 3] = 0.95                    # window: input luma >= 0.85
    inp[-height // 4:, -width // 4:] = 0.05                    # shadow: input luma < 0.15
    pred = np.clip(target + rng.normal(0, 0.05, target.shape), 0, 1).astype(np.float32)
    return inp, pred, target


def write_folders(root, count=3, pred_extension=".png"):
    for name in ("input", "pred", "target"):
        (root / name).mkdir(parents=True, exist_ok=True)
    for index in range(count):
        inp, pred, target = photo_triplet(index)
        write_image(root / "input" / f"{index}.png", inp, bit_depth=16)
        write_image(root / "pred" / f"{index}{pred_extension}", pred, bit_depth=16)
        write_image(root / "target" / f"{index}.png", target, bit_depth=16)


def read_csv(path):
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def luma(rgb):
    return 0.2126 * rgb[..., 0] + 0.7152 * rgb[..., 1] + 0.0722 * rgb[..., 2]


def test_numbers_match_scikit_image(tmp_path, capsys):
    write_folders(tmp_path, count=3)
    means = evaluate.main(["--pred", str(tmp_path / "pred"), "--target", str(tmp_path / "target"),
                           "--input", str(tmp_path / "input"), "--device", "cpu"])
    rows = read_csv(tmp_path / "pred" / "metrics.csv")
    assert [row["name"] for row in rows] == ["0", "1", "2", "mean"]
    expected = {name: [] for name in ("l1", "psnr", "ssim", "window_psnr", "shadow_psnr")}
    for row in rows[:3]:
        inp, pred, target = (read_image(tmp_path / folder / f"{row['name']}.png")
                             for folder in ("input", "pred", "target"))
        window, shadow = luma(inp) >= 0.85, luma(inp) < 0.15
        reference = {
            "l1": np.abs(pred - target).mean(),
            "psnr": peak_signal_noise_ratio(target, pred, data_range=1),
            "ssim": structural_similarity(target, pred, channel_axis=-1, gaussian_weights=True, sigma=1.5,
                                          use_sample_covariance=False, data_range=1),
            "window_psnr": peak_signal_noise_ratio(target[window], pred[window], data_range=1),
            "shadow_psnr": peak_signal_noise_ratio(target[shadow], pred[shadow], data_range=1),
        }
        for name, value in reference.items():
            assert float(row[name]) == pytest.approx(value, abs=1e-3), name
            expected[name].append(value)
        assert float(row["window_fraction"]) == pytest.approx(window.mean(), abs=1e-6)
    for name, values in expected.items():
        assert means[name] == pytest.approx(np.mean(values), abs=1e-3)
        assert float(rows[3][name]) == pytest.approx(np.mean(values), abs=1e-3)
    printed = capsys.readouterr().out
    assert f"{np.mean(expected['psnr']):.2f}" in printed and "window PSNR (dB)" in printed


def test_region_without_pixels_is_empty_not_zero(tmp_path):
    for name in ("input", "pred", "target"):
        (tmp_path / name).mkdir()
    grey = np.full((32, 32, 3), 0.5, np.float32)
    write_image(tmp_path / "input" / "a.png", grey)           # neither window nor shadow
    write_image(tmp_path / "pred" / "a.png", grey * 0.9)
    write_image(tmp_path / "target" / "a.png", grey)
    means = evaluate.main(["--pred", str(tmp_path / "pred"), "--target", str(tmp_path / "target"),
                           "--input", str(tmp_path / "input"), "--device", "cpu"])
    row = read_csv(tmp_path / "pred" / "metrics.csv")[0]
    assert row["window_psnr"] == "" and row["shadow_psnr"] == "" and float(row["window_fraction"]) == 0
    assert math.isnan(means["window_psnr"]) and means["psnr"] > 20


def test_masked_psnr():
    pred, target = torch.zeros(2, 3, 4, 4), torch.zeros(2, 3, 4, 4)
    pred[:, :, :2] = 0.1                                      # error 0.1 on the top half only
    top = torch.zeros(2, 1, 4, 4, dtype=torch.bool)
    top[:, :, :2] = True
    assert masked_psnr(pred, target, top, reduction="none").tolist() == pytest.approx([20.0, 20.0], abs=1e-4)
    assert masked_psnr(pred, target, ~top).tolist() == pytest.approx(100.0)  # exact region: capped at 100 dB
    weights = top.float() * 0.5                                 # uniform weights give the same value
    assert masked_psnr(pred, target, weights).item() == pytest.approx(20.0, abs=1e-4)
    empty = torch.zeros_like(top)
    empty[0] = top[0]
    per_image = masked_psnr(pred, target, empty, reduction="none")
    assert per_image[0].item() == pytest.approx(20.0, abs=1e-4) and math.isnan(per_image[1].item())
    assert masked_psnr(pred, target, empty).item() == pytest.approx(20.0, abs=1e-4)   # mean over images with it
    with pytest.raises(ValueError, match="mask must have shape"):
        masked_psnr(pred, target, torch.ones(2, 3, 4, 4))


def test_data_mode_matches_pairs_like_training(tmp_path):
    write_folders(tmp_path / "data", count=2)
    predictions = tmp_path / "enhanced"
    predictions.mkdir()
    for index in range(2):                                    # enhance.py-style names: other extension, a suffix
        write_image(predictions / f"{index}_hdr.jpg", photo_triplet(index)[1])
    evaluate.main(["--pred", str(predictions), "--data", str(tmp_path / "data"), "--suffix", "_hdr",
                   "--split", "all", "--device", "cpu"])
    rows = read_csv(predictions / "metrics.csv")
    assert [row["name"] for row in rows] == ["0", "1", "mean"] and rows[0]["window_psnr"] != ""
    (predictions / "1_hdr.jpg").unlink()
    with pytest.raises(ValueError, match="no prediction for 1 of 2 pair"):
        evaluate.main(["--pred", str(predictions), "--data", str(tmp_path / "data"), "--suffix", "_hdr",
                       "--split", "all"])


def test_checkpoint_mode_scores_the_enhanced_inputs(identity_checkpoint, tiny_pairs, tmp_path):
    # an identity model's predictions are the inputs: its scores are the as-shot baseline
    means = evaluate.main(["--checkpoint", str(identity_checkpoint.parent), "--data", str(tiny_pairs),
                           "--device", "cpu", "--tile", "32", "--overlap", "8"])
    predictions = identity_checkpoint.parent / "eval_data"
    assert sorted(p.name for p in predictions.glob("*.png")) == ["000.png", "001.png"]
    assert "seconds" in read_csv(predictions / "metrics.csv")[0]
    baseline = evaluate.main(["--pred", str(tiny_pairs / "val" / "input"), "--data", str(tiny_pairs),
                              "--csv", str(tmp_path / "baseline.csv")])
    for name in ("l1", "psnr", "ssim", "window_psnr"):
        assert means[name] == pytest.approx(baseline[name], abs=1e-4)


def test_unreadable_prediction_is_named_and_skipped(tmp_path):
    write_folders(tmp_path, count=2)
    (tmp_path / "pred" / "1.png").write_bytes(b"not a png")
    with pytest.raises(SystemExit) as failure:
        evaluate.main(["--pred", str(tmp_path / "pred"), "--target", str(tmp_path / "target")])
    assert "1 of 2 image(s) failed" in str(failure.value.code) and "1.png" in str(failure.value.code)
    assert [row["name"] for row in read_csv(tmp_path / "pred" / "metrics.csv")] == ["0", "mean"]


def test_argument_errors(tmp_path):
    with pytest.raises(SystemExit):
        evaluate.main(["--pred", str(tmp_path)])             # no targets
    with pytest.raises(FileNotFoundError, match="--target .* is not a folder"):
        evaluate.main(["--pred", str(tmp_path), "--target", str(tmp_path / "missing")])
