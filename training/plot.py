"""Loss curve: ``python -m comfyui_dwm.training.plot OUTPUT_DIR`` (also written at the end of training).

Reads ``<output_dir>/logs/loss.csv`` (step, loss, lr, samples_per_s; one row per optimizer step, kept
across resumes) and writes ``loss.png`` beside it: the raw loss and a moving average, log scale.
"""

from __future__ import annotations

import csv
import os
import sys

LOSS_CSV = os.path.join("logs", "loss.csv")
FIELDS = ("step", "loss", "lr", "samples_per_s")


def read_log(output_dir: str) -> list[dict]:
    path = os.path.join(output_dir, LOSS_CSV)
    if not os.path.isfile(path):
        return []
    with open(path, encoding="utf-8") as fh:
        return [{k: float(v) for k, v in row.items()} for row in csv.DictReader(fh)]


def moving_average(values: list[float], window: int) -> list[float]:
    out, total = [], 0.0
    for i, v in enumerate(values):
        total += v - (values[i - window] if i >= window else 0.0)
        out.append(total / min(i + 1, window))
    return out


def plot_loss(output_dir: str) -> str | None:
    """Write ``logs/loss.png``; None when there is nothing logged yet."""
    rows = read_log(output_dir)
    if not rows:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps, loss = [r["step"] for r in rows], [r["loss"] for r in rows]
    fig, ax = plt.subplots(figsize=(8, 4.5))
    ax.plot(steps, loss, alpha=0.3, label="loss")
    ax.plot(steps, moving_average(loss, max(1, len(loss) // 50)), label="moving average")
    ax.set(xlabel="step", ylabel="loss", yscale="log", title=os.path.basename(os.path.normpath(output_dir)))
    ax.legend()
    out = os.path.join(output_dir, "logs", "loss.png")
    fig.savefig(out, dpi=120, bbox_inches="tight")
    plt.close(fig)
    return out


if __name__ == "__main__":
    print(plot_loss(sys.argv[1]) or "no loss logged yet")
