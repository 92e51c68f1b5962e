"""Training speed with `train.group_by_length` vs. without, on the default model's own mixture.

Setup: the packaged default model (128 px, 64 image tokens, 4-layer LM), trained whole (`stage: full`, bf16
autocast, batch 32) on configs/default/stage12.yaml's mixture (captchas of ~90 tokens, 4-turn count / position
chats, 4-turn grounding chats of ~250 tokens, colour questions, captions). Without grouping nearly every batch holds
one grounding chat and is padded to its length; with grouping most batches hold one kind of sample.

Both runs see the same number of steps from the same weights and seed; the figure is samples/s after the first
two steps. Run: `python bench/length_grouping.py [--steps 24]`. Prints both rates and, last,
`length_grouping_speedup: X (target: 1.3)` = grouped / ungrouped samples/s; exits 1 below target.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch
import yaml
from train_throughput import measured_rate  # bench/ is on sys.path when run as a script

from vlmkit.train.config import RunConfig
from vlmkit.train.loop import train

ROOT = Path(__file__).resolve().parents[1]
RECIPE = ROOT / "configs" / "default" / "stage12.yaml"
TARGET = 1.3


def run(steps: int, batch: int, group: bool, out: Path) -> float:
    recipe = yaml.safe_load(RECIPE.read_text())
    mixture = [{k: v for k, v in e.items() if k not in ("valid_n", "valid_options")} for e in recipe["data"]["synthetic"]]
    cfg = RunConfig.from_dict({
        "model": "default", "stage": "full", "freeze": recipe["freeze"],
        "data": {"synthetic": mixture},
        "train": {"lr": 1e-5, "batch_size": batch, "max_steps": steps, "warmup_steps": 0, "bf16": True,
                  "log_every": 1, "seed": 0, "keep_last": 1, "group_by_length": group},
        "output_dir": str(out),
    })
    stamps: list[float] = []
    train(cfg, overwrite=True, callback=lambda step, record: stamps.append(time.perf_counter()))
    return measured_rate(stamps, batch)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--steps", type=int, default=24)
    p.add_argument("--batch-size", type=int, default=32)
    args = p.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {args.steps} steps x {args.batch_size}")
    with tempfile.TemporaryDirectory() as tmp:
        plain = run(args.steps, args.batch_size, False, Path(tmp) / "plain")
        print(f"ungrouped (a random mixture per batch): {plain:.1f} samples/s")
        grouped = run(args.steps, args.batch_size, True, Path(tmp) / "grouped")
        print(f"group_by_length:                        {grouped:.1f} samples/s")
    ratio = grouped / plain
    print(f"length_grouping_speedup: {ratio:.2f} (target: {TARGET})")
    return 0 if ratio >= TARGET else 1


if __name__ == "__main__":
    sys.exit(main())
