"""What a run shows and writes besides checkpoints: log lines, ``metrics.csv``, TensorBoard scalars,
``curves.png`` and the final summary (all on rank 0)."""
from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

from tqdm.auto import tqdm

from .. import checkpoint as ckpt
from .config import History
from .phases import Phase


class Reporter:
    """Rank 0's output. ``run_dir`` None writes no files; ``progress`` False prints nothing."""

    def __init__(self, run_dir: Optional[Path], progress: bool, main: bool):
        self.run_dir, self.progress, self.main = run_dir, progress, main
        self.tensorboard = None

    def open(self) -> None:
        if self.main and self.run_dir:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            self.tensorboard = _tensorboard(self.run_dir)

    def close(self) -> None:
        if self.tensorboard is not None:
            self.tensorboard.close()

    def log(self, message: str) -> None:
        if self.main and self.progress:
            tqdm.write(message)

    def epoch(self, row: Dict[str, Any]) -> None:
        self.log(" ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()))

    def write_metrics(self, rows: List[Dict[str, Any]]) -> None:
        if not (self.main and self.run_dir):
            return
        columns = list(dict.fromkeys(k for row in rows for k in row))
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
        ckpt.atomic_write_text(buffer.getvalue(), self.run_dir / "metrics.csv")
        if self.tensorboard is not None:
            row = rows[-1]
            for key, value in row.items():
                if isinstance(value, float):
                    self.tensorboard.add_scalar(key, value, row["epoch"])
        plot_curves(rows, self.run_dir / "curves.png")

    def summary(self, history: History, phases: Sequence[Phase], seconds: float,
                last_checkpoint: Optional[Path]) -> None:
        h = history
        lines = ["", "fine-tuning summary", "-------------------"]
        if "teacher_val_acc" in h.initial:
            lines.append(f"teacher (float) val acc   {h.initial['teacher_val_acc']:.4f}")
        if "student_val_acc" in h.initial:
            lines.append(f"student before training   {h.initial['student_val_acc']:.4f}")
        if h.epochs and "val_acc" in h.epochs[-1]:
            lines.append(f"student after training    {h.epochs[-1]['val_acc']:.4f} (epoch {h.epochs[-1]['epoch']})")
        if h.best_val_acc is not None:
            lines.append(f"best val acc, last stage  {h.best_val_acc:.4f} (epoch {h.best_epoch})")
        if h.batchnorm_check is not None:
            check = h.batchnorm_check
            lines.append(f"BatchNorm statistics      {check['kept']} (eval-mode acc on {check['check_samples']} training "
                         f"samples: running {check['running_acc']:.4f}, recomputed {check['recomputed_acc']:.4f})")
        lines.append(f"epochs {sum(p.epochs for p in phases)} ({', '.join(f'{p.name}: {p.epochs}' for p in phases)}), "
                     f"{seconds:.0f} s this session")
        if self.run_dir:
            lines.append(f"run folder {self.run_dir}: metrics.csv, best.pt, checkpoints/ (last: {last_checkpoint})")
        self.log("\n".join(lines))


def _tensorboard(run_dir: Path):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # tensorboard is optional
        return None
    return SummaryWriter(str(run_dir / "tensorboard"))


def plot_curves(rows: List[Dict[str, Any]], path: Path) -> None:
    """Loss and accuracy per epoch as a PNG, written atomically; skipped without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    epochs = [row["epoch"] for row in rows]
    figure, (loss_axis, acc_axis) = plt.subplots(1, 2, figsize=(10, 4))
    for key, axis in (("train_loss", loss_axis), ("val_loss", loss_axis), ("train_acc", acc_axis), ("val_acc", acc_axis)):
        if all(key in row for row in rows):
            axis.plot(epochs, [row[key] for row in rows], marker="o", label=key)
    for axis, label in ((loss_axis, "loss"), (acc_axis, "accuracy")):
        axis.set_xlabel("epoch")
        axis.set_ylabel(label)
        axis.legend()
    ckpt.atomic_write(path, lambda handle: figure.savefig(handle, format="png", dpi=100))
    plt.close(figure)
