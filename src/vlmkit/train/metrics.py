"""What a run reports: `metrics.jsonl` (one JSON object per log step and per evaluation), the progress bar,
and a PNG plot of the training and validation loss drawn at the end.

Records carry `"step"`; training records have `"loss"`, `"lr"`, `"grad_norm"`, `"samples_per_s"`; evaluation
records have `"valid_loss"` (and `"valid_accuracy"` when answers are generated).
"""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

METRICS_FILE = "metrics.jsonl"
PLOT_FILE = "loss.png"


class MetricsLog:
    """Append-only `metrics.jsonl` of a run (a no-op on ranks other than 0)."""

    def __init__(self, run_dir: Path, enabled: bool = True) -> None:
        self.path = Path(run_dir) / METRICS_FILE
        self.enabled = enabled

    def append(self, record: dict[str, Any]) -> None:
        if not self.enabled:
            return
        with self.path.open("a", encoding="utf-8") as f:
            f.write(json.dumps(record, ensure_ascii=False) + "\n")

    def records(self) -> list[dict[str, Any]]:
        return read_metrics(self.path)

    def truncate_after(self, step: int) -> None:
        """Drop records past `step` (on resume: the steps that are about to be run again)."""
        if not self.enabled or not self.path.is_file():
            return
        kept = [r for r in self.records() if int(r.get("step", 0)) <= step]
        tmp = self.path.with_name(f".{self.path.name}.tmp-{os.getpid()}")
        tmp.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in kept), encoding="utf-8")
        os.replace(tmp, self.path)


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    """All records of a `metrics.jsonl` (a torn last line from a crash is skipped)."""
    path = Path(path)
    if not path.is_file():
        return []
    out = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return out


def plot_losses(records: list[dict[str, Any]], path: str | Path, title: str = "") -> Path | None:
    """Draw train loss (and valid loss when present) against the step into a PNG; None without data."""
    train = [(r["step"], r["loss"]) for r in records if "loss" in r and _finite(r["loss"])]
    valid = [(r["step"], r["valid_loss"]) for r in records if "valid_loss" in r and _finite(r["valid_loss"])]
    if not train and not valid:
        return None
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
    if train:
        ax.plot(*zip(*train), label="train loss", linewidth=1.2)
    if valid:
        ax.plot(*zip(*valid), "o-", label="valid loss", linewidth=1.5, markersize=4)
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    path = Path(path)
    tmp = path.with_name(f".{path.stem}.tmp-{os.getpid()}{path.suffix}")
    fig.savefig(tmp)
    plt.close(fig)
    os.replace(tmp, path)
    return path


def _finite(x: Any) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x)


class Throughput:
    """Samples per second since the last call to `rate()`."""

    def __init__(self) -> None:
        self.t0 = time.perf_counter()
        self.samples = 0

    def add(self, n: int) -> None:
        self.samples += n

    def rate(self) -> float:
        now = time.perf_counter()
        rate = self.samples / max(now - self.t0, 1e-9)
        self.t0, self.samples = now, 0
        return rate


class Progress:
    """A tqdm bar over optimizer steps showing loss, lr and samples/s (silent on ranks other than 0)."""

    def __init__(self, total: int, initial: int = 0, enabled: bool = True) -> None:
        self.bar = tqdm(total=total, initial=initial, disable=not enabled, desc="train", unit="step",
                        dynamic_ncols=True)

    def update(self, loss: float, lr: float, samples_per_s: float | None = None) -> None:
        post = {"loss": f"{loss:.4f}", "lr": f"{lr:.2e}"}
        if samples_per_s is not None:
            post["samples/s"] = f"{samples_per_s:.1f}"
        self.bar.set_postfix(post, refresh=False)
        self.bar.update(1)

    def write(self, text: str) -> None:
        if not self.bar.disable:
            self.bar.write(text)

    def close(self) -> None:
        self.bar.close()
