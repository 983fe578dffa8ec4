"""Video quality metrics against ground truth, for validation and ``python -m comfyui_dwm.evaluate``.

Videos are ``[F, H, W, 3]`` float in [0, 1] of the same shape; every metric is computed per frame and
averaged over frames. PSNR is capped at ``PSNR_CAP`` dB so identical videos give a finite, sortable
number. SSIM is kornia's standard Gaussian-window SSIM (11x11, sigma 1.5, K1 0.01, K2 0.03, per channel).
LPIPS and DreamSim need pretrained weights: they run only when those are already on disk (nothing is
downloaded), otherwise ``perceptual_metrics`` says in one line why each is skipped.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Callable

import kornia
import torch
import torch.nn.functional as F

PSNR_CAP = 100.0
SSIM_WINDOW = 11
LPIPS_BACKBONE = "alexnet-owt-7be5be79.pth"  # torchvision's AlexNet, which LPIPS(net="alex") loads

Metric = Callable[[torch.Tensor, torch.Tensor], float]


def _check(pred: torch.Tensor, gt: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    if pred.shape != gt.shape:
        raise ValueError(f"prediction {list(pred.shape)} and ground truth {list(gt.shape)} differ in shape")
    return pred.float().clamp(0, 1), gt.float().clamp(0, 1)


def psnr_frames(pred: torch.Tensor, gt: torch.Tensor) -> torch.Tensor:
    """Per-frame PSNR in dB (peak 1.0), capped at ``PSNR_CAP``."""
    pred, gt = _check(pred, gt)
    mse = ((pred - gt) ** 2).flatten(1).mean(dim=1)
    floor = 10 ** (-PSNR_CAP / 10)
    return (10 * torch.log10(1 / mse.clamp_min(floor))).clamp_max(PSNR_CAP)


def psnr(pred: torch.Tensor, gt: torch.Tensor) -> float:
    return float(psnr_frames(pred, gt).mean())


def ssim_frames(pred: torch.Tensor, gt: torch.Tensor) -> torch.Tensor:
    """Per-frame SSIM (kornia's Gaussian-window SSIM, mean over valid window positions and channels)."""
    pred, gt = _check(pred, gt)
    ssim_map = kornia.metrics.ssim(pred.permute(0, 3, 1, 2), gt.permute(0, 3, 1, 2), SSIM_WINDOW, padding="valid")
    return ssim_map.flatten(1).mean(dim=1)


def ssim(pred: torch.Tensor, gt: torch.Tensor) -> float:
    return float(ssim_frames(pred, gt).mean())


def _lpips() -> tuple[Metric | None, str]:
    if importlib.util.find_spec("lpips") is None:
        return None, "the lpips package is not installed"
    backbone = os.path.join(torch.hub.get_dir(), "checkpoints", LPIPS_BACKBONE)
    if not os.path.isfile(backbone):
        return None, f"no AlexNet weights at {backbone}"
    import lpips

    model = lpips.LPIPS(net="alex", verbose=False).eval()

    def metric(pred, gt):
        pred, gt = _check(pred, gt)
        with torch.no_grad():
            return float(model(pred.permute(0, 3, 1, 2) * 2 - 1, gt.permute(0, 3, 1, 2) * 2 - 1).mean())

    return metric, ""


def _dreamsim(cache_dir: str) -> tuple[Metric | None, str]:
    if importlib.util.find_spec("dreamsim") is None:
        return None, "the dreamsim package is not installed"
    if not cache_dir or not os.path.isdir(cache_dir) or not os.listdir(cache_dir):
        return None, f"no DreamSim weights in {cache_dir or '(no cache folder given)'}"
    from dreamsim import dreamsim

    model, _ = dreamsim(pretrained=True, cache_dir=cache_dir)

    def metric(pred, gt):
        pred, gt = _check(pred, gt)

        def prep(v):  # DreamSim's own preprocessing: 224x224 bicubic, values in [0, 1]
            return F.interpolate(v.permute(0, 3, 1, 2), size=(224, 224), mode="bicubic").clamp(0, 1)

        with torch.no_grad():
            return float(model(prep(pred), prep(gt)).mean())

    return metric, ""


def all_metrics(dreamsim_cache: str = "", log: Callable[[str], None] = print) -> dict[str, Metric]:
    """PSNR and SSIM always; LPIPS and DreamSim when their weights are local (one skip line each)."""
    metrics: dict[str, Metric] = {"psnr": psnr, "ssim": ssim}
    for name, (metric, why) in (("lpips", _lpips()), ("dreamsim", _dreamsim(dreamsim_cache))):
        if metric is None:
            log(f"{name} skipped: {why}")
        else:
            metrics[name] = metric
    return metrics
