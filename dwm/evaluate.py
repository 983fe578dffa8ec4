"""Score generated videos against ground truth: ``python -m comfyui_dwm.evaluate --pred DIR --gt DIR``.

Videos are paired by file stem (``pred/00055.mp4`` <-> ``gt/00055.mp4``). A prediction of another size
is scaled to cover the ground truth's size and centre-cropped (``dwm.frames.resize_cover``), and both
are cut to the shorter length; each adjustment is reported. Writes ``metrics.csv`` and ``metrics.md``
(one row per sample and a mean row) into ``--out`` (default: the prediction folder).
"""

from __future__ import annotations

import argparse
import csv
import io
import math
import os
import sys

import torch

from .atomic import atomic_path
from .errors import DWMError
from .frames import resize_cover
from .metrics import all_metrics
from .video_io import read_video

VIDEO_EXTS = (".mp4", ".webm", ".mov", ".mkv")


def _videos(folder: str) -> dict[str, str]:
    if not os.path.isdir(folder):
        raise DWMError("evaluate", f"{folder} is not a folder", "pass folders of videos to --pred and --gt")
    return {os.path.splitext(n)[0]: os.path.join(folder, n) for n in sorted(os.listdir(folder))
            if n.lower().endswith(VIDEO_EXTS)}


def align(pred: torch.Tensor, gt: torch.Tensor, name: str, log=print) -> tuple[torch.Tensor, torch.Tensor]:
    """Bring the prediction to the ground truth's size and both to the shorter length, saying so."""
    if pred.shape[1:3] != gt.shape[1:3]:
        log(f"{name}: prediction {pred.shape[2]}x{pred.shape[1]} scaled to the ground truth's {gt.shape[2]}x{gt.shape[1]}")
        pred = resize_cover(pred, gt.shape[2], gt.shape[1])
    frames = min(pred.shape[0], gt.shape[0])
    if pred.shape[0] != gt.shape[0]:
        log(f"{name}: {pred.shape[0]} predicted vs {gt.shape[0]} ground-truth frames, scoring the first {frames}")
    return pred[:frames], gt[:frames]


def evaluate(pred_dir: str, gt_dir: str, dreamsim_cache: str = "", log=print) -> list[dict]:
    """Rows ``{"sample": stem, metric: value, ...}``, one per video present in both folders."""
    preds, gts = _videos(pred_dir), _videos(gt_dir)
    common = [s for s in preds if s in gts]
    if not common:
        raise DWMError("evaluate", f"no video in {pred_dir} has a same-named video in {gt_dir}",
                       "name each prediction like its ground truth (e.g. 00055.mp4 in both)")
    for stem in sorted(set(preds) - set(gts)):
        log(f"{stem}: no ground truth, skipped")
    metrics = all_metrics(dreamsim_cache, log)
    rows = []
    for stem in common:
        pred, _ = read_video(preds[stem], f"prediction {stem}")
        gt, _ = read_video(gts[stem], f"ground truth {stem}")
        pred, gt = align(pred, gt, stem, log)
        rows.append({"sample": stem, **{name: fn(pred, gt) for name, fn in metrics.items()}})
    return rows


def with_mean(rows: list[dict]) -> list[dict]:
    keys = [k for k in rows[0] if k != "sample"]
    return rows + [{"sample": "mean", **{k: sum(r[k] for r in rows) / len(rows) for k in keys}}]


def _fmt(value) -> str:
    return value if isinstance(value, str) else ("inf" if math.isinf(value) else f"{value:.4f}")


def write_tables(rows: list[dict], out_dir: str) -> tuple[str, str]:
    """``metrics.csv`` and ``metrics.md`` (with the mean row), written atomically."""
    rows = with_mean(rows)
    keys = list(rows[0])
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=keys, lineterminator="\n")
    writer.writeheader()
    writer.writerows({k: _fmt(v) for k, v in r.items()} for r in rows)
    md = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    md += ["| " + " | ".join(_fmt(r[k]) for k in keys) + " |" for r in rows]
    paths = os.path.join(out_dir, "metrics.csv"), os.path.join(out_dir, "metrics.md")
    for path, text in zip(paths, (buf.getvalue(), "\n".join(md) + "\n")):
        with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as fh:
            fh.write(text)
    return paths


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m comfyui_dwm.evaluate", allow_abbrev=False,
                                     description="PSNR/SSIM (and LPIPS/DreamSim when available) of videos")
    parser.add_argument("--pred", required=True, help="folder of generated videos")
    parser.add_argument("--gt", required=True, help="folder of ground-truth videos with the same names")
    parser.add_argument("--out", default=None, help="where to write metrics.csv/.md (default: --pred)")
    parser.add_argument("--dreamsim-cache", default="", help="folder holding DreamSim's downloaded weights")
    args = parser.parse_args(argv)
    try:
        rows = evaluate(args.pred, args.gt, args.dreamsim_cache)
    except DWMError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    csv_path, md_path = write_tables(rows, args.out or args.pred)
    with open(md_path, encoding="utf-8") as fh:
        print(fh.read(), end="")
    print(f"wrote {csv_path} and {md_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
