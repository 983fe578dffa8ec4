"""PSNR/SSIM on fixed tensors and the evaluate CLI's tables."""

from __future__ import annotations

import csv
import math

import pytest
import torch

from comfyui_dwm.evaluate import main
from comfyui_dwm.metrics import PSNR_CAP, all_metrics, psnr, psnr_frames, ssim
from comfyui_dwm.video_io import write_video


def video(seed=0, frames=3, h=32, w=40):
    return torch.rand(frames, h, w, 3, generator=torch.Generator().manual_seed(seed))


def test_psnr_identical_is_capped_and_known_values():
    v = video()
    assert psnr(v, v) == PSNR_CAP
    gray = torch.full((2, 8, 8, 3), 0.5)
    assert psnr(gray, gray + 0.1) == pytest.approx(20.0, abs=1e-4)  # mse 0.01 -> 20 dB
    assert psnr(gray, gray + 0.01) == pytest.approx(40.0, abs=1e-3)
    frames = psnr_frames(torch.cat([gray[:1], gray[:1]]), torch.cat([gray[:1] + 0.1, gray[:1]]))
    assert frames.tolist() == pytest.approx([20.0, PSNR_CAP], abs=1e-4)  # per frame, then averaged


def test_ssim_identical_is_one_constant_images_follow_the_formula_and_noise_lowers_it():
    a = video(1)
    assert ssim(a, a) == pytest.approx(1.0, abs=1e-6)
    # Constant frames: variances and covariance vanish, SSIM = (2 mx my + c1) / (mx^2 + my^2 + c1).
    x, y, c1 = 0.3, 0.6, 0.01 ** 2
    assert ssim(torch.full((2, 16, 16, 3), x), torch.full((2, 16, 16, 3), y)) == pytest.approx(
        (2 * x * y + c1) / (x * x + y * y + c1), abs=1e-5)
    noisy = [(a + s * torch.randn(a.shape, generator=torch.Generator().manual_seed(2))).clamp(0, 1)
             for s in (0.05, 0.2)]
    assert 1 > ssim(a, noisy[0]) > ssim(a, noisy[1])


def test_missing_perceptual_weights_are_skipped_with_one_line(tmp_path):
    lines = []
    metrics = all_metrics(str(tmp_path / "no-dreamsim"), lines.append)
    assert {"psnr", "ssim"} <= set(metrics)
    assert all(line.count("\n") == 0 and "skipped" in line for line in lines)
    assert len(lines) == 4 - len(metrics)


def test_evaluate_cli_writes_csv_and_markdown(tmp_path, capsys):
    pred, gt = tmp_path / "pred", tmp_path / "gt"
    for i, stem in enumerate(("00013", "00055")):
        write_video(str(gt / f"{stem}.mp4"), video(i, 5))
        write_video(str(pred / f"{stem}.mp4"), video(i, 5) if i == 0 else video(9, 5))
    write_video(str(pred / "extra.mp4"), video(3, 5))
    assert main(["--pred", str(pred), "--gt", str(gt), "--out", str(tmp_path / "out")]) == 0
    rows = list(csv.DictReader(open(tmp_path / "out" / "metrics.csv")))
    assert [r["sample"] for r in rows] == ["00013", "00055", "mean"]
    assert float(rows[0]["psnr"]) > float(rows[1]["psnr"])
    mean = (float(rows[0]["ssim"]) + float(rows[1]["ssim"])) / 2
    assert math.isclose(float(rows[2]["ssim"]), mean, abs_tol=1e-4)
    md = (tmp_path / "out" / "metrics.md").read_text()
    assert md.startswith("| sample | psnr | ssim") and "| mean |" in md
    assert "extra: no ground truth, skipped" in capsys.readouterr().out
    assert main(["--pred", str(tmp_path / "out"), "--gt", str(gt)]) == 1  # no pairs: a clear error
