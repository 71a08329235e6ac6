"""JSON-lines training metrics and their curves.

``metrics.jsonl`` holds one JSON object per logged optimiser step, at least
``{"step": int, "loss": float, "lr": float}`` plus the model's logged floats. While a run
trains, the file lives in its state folder and is appended to (one flushed line per
record); after a resume, records past the checkpoint's step are dropped first, so a
resumed run's file equals an uninterrupted run's.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from brainharmony.io import InputDataError, PathLike, atomic_path, write_text

__all__ = ["MetricsLog", "plot_curves", "read_metrics"]


def read_metrics(path: PathLike) -> list[dict[str, Any]]:
    """Read a ``metrics.jsonl`` file (an absent file reads as no records).

    Raises
    ------
    InputDataError
        A line that is not a JSON object with a ``step``.
    """
    p = Path(path)
    if not p.is_file():
        return []
    records = []
    for number, line in enumerate(p.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            raise InputDataError(p, f"line {number} is not JSON: {err}") from None
        if not isinstance(record, dict) or "step" not in record:
            raise InputDataError(p, f"line {number} is not an object with a 'step'")
        records.append(record)
    return records


def _clean(value: Any) -> Any:
    """JSON has no NaN/inf: write them as strings so the file stays standard JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value


class MetricsLog:
    """Append-only JSON-lines writer.

    Parameters
    ----------
    path : path-like
        The ``metrics.jsonl`` being written.
    """

    def __init__(self, path: PathLike) -> None:
        self.path = Path(path)

    def truncate_after(self, step: int) -> None:
        """Keep only the records with ``step <= step`` (rewritten atomically)."""
        kept = [r for r in read_metrics(self.path) if int(r["step"]) <= step]
        write_text(self.path, "".join(json.dumps(r, sort_keys=True) + "\n" for r in kept))

    def append(self, record: Mapping[str, Any]) -> None:
        """Append one record (a line) and flush it to the OS."""
        line = json.dumps({k: _clean(v) for k, v in record.items()}, sort_keys=True)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a", encoding="utf-8") as handle:
            handle.write(line + "\n")
            handle.flush()


def plot_curves(records: Sequence[Mapping[str, Any]], path: PathLike, title: str = "") -> Path:
    """Draw loss and learning rate against the step into ``path`` (PNG, atomic).

    The loss axis is logarithmic when every loss is positive.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [int(r["step"]) for r in records]
    loss = [float(r["loss"]) for r in records]
    lr = [float(r["lr"]) for r in records]
    fig, (ax_loss, ax_lr) = plt.subplots(2, 1, figsize=(6, 5), sharex=True)
    ax_loss.plot(steps, loss, marker="." if len(steps) < 50 else None, color="tab:blue")
    if loss and all(v > 0 for v in loss):
        ax_loss.set_yscale("log")
    ax_loss.set_ylabel("loss")
    ax_loss.grid(alpha=0.3)
    ax_lr.plot(steps, lr, color="tab:orange")
    ax_lr.set_ylabel("learning rate")
    ax_lr.set_xlabel("optimiser step")
    ax_lr.grid(alpha=0.3)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=100, format="png")
    plt.close(fig)
    return Path(path)
