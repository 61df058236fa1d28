"""What a run writes for people: train_log.jsonl (one row per logged step, evaluation or optimizer restart) and
train_curve.png (training loss and per-task validation loss against steps)."""

from __future__ import annotations

import json
from pathlib import Path

from econlm.io import atomic_open

TRAIN_LOG = "train_log.jsonl"
TRAIN_CURVE = "train_curve.png"


class TrainLog:
    """Append-only JSONL log that `--resume` rewinds to the checkpoint it continues from."""

    def __init__(self, run_dir: Path):
        self.path = run_dir / TRAIN_LOG

    def rows(self) -> list[dict]:
        """All complete rows. A kill can leave a half-written last line; it is skipped, which is
        why this reader is more lenient than `econlm.io.read_jsonl`."""
        if not self.path.is_file():
            return []
        rows = []
        for line in self.path.read_text(encoding="utf-8").splitlines():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                continue
        return rows

    def rewind(self, step: int) -> None:
        """Keep only rows up to `step` (they are re-logged, identically, as training continues)."""
        kept = [r for r in self.rows() if r["step"] <= step]
        with atomic_open(self.path) as fh:
            fh.writelines(json.dumps(r) + "\n" for r in kept)

    def append(self, row: dict) -> None:
        with self.path.open("a", encoding="utf-8") as fh:
            fh.write(json.dumps(row) + "\n")


def plot_curve(rows: list[dict], out: Path, best_step: int | None) -> None:
    """Training loss (raw and smoothed) and validation loss per task, atomically as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    train = [r for r in rows if "loss" in r]
    evals = [r for r in rows if "val_loss" in r]
    fig, ax = plt.subplots(figsize=(8, 4.5))
    if train:
        steps = [r["step"] for r in train]
        losses = [r["loss"] for r in train]
        ax.plot(steps, losses, color="tab:blue", alpha=0.25, lw=0.8, label="train loss")
        window = max(1, len(losses) // 25)
        smooth = [sum(losses[max(0, i - window + 1): i + 1]) / len(losses[max(0, i - window + 1): i + 1]) for i in range(len(losses))]
        ax.plot(steps, smooth, color="tab:blue", lw=1.5, label=f"train loss (mean of {window})")
    if evals:
        tasks = sorted(evals[-1]["val_loss"])
        for task in tasks:
            ax.plot([r["step"] for r in evals], [r["val_loss"].get(task) for r in evals], marker="o", ms=3, label=f"val {task}")
        ax.plot([r["step"] for r in evals], [r["val_loss_mean"] for r in evals], marker="s", ms=3, color="black", label="val mean")
    if best_step is not None:
        ax.axvline(best_step, color="grey", ls="--", lw=1, label=f"best (step {best_step})")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("cross-entropy on answer tokens")
    ax.set_title("econlm train")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    with atomic_open(out, "wb") as fh:
        fig.savefig(fh, format="png", dpi=110)
    plt.close(fig)
