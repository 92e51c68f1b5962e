"""`vlmkit train RUN.yaml [--set a.b=c ...] [--resume] [--overwrite]`: run one training config.

Data-parallel: `torchrun --nproc_per_node N -m vlmkit.cli.train RUN.yaml` (or `python -m torch.distributed.run
...`); every process runs the same command and rank 0 writes the outputs.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train a model from a run config (YAML)",
                       description="Train as described by a run YAML (model, data, stage, peft, optimizer); "
                                   "outputs go to its output_dir: checkpoints, metrics.jsonl, loss.png, "
                                   "final/.")
    configure(p)


def configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", help="run config file (YAML), e.g. configs/shapes_llava_tiny.yaml")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a run config key, e.g. --set train.lr=1e-4 (repeatable)")
    p.add_argument("--resume", action="store_true",
                   help="continue from the newest complete checkpoint in output_dir")
    p.add_argument("--overwrite", action="store_true", help="replace a previous run in output_dir")
    p.add_argument("--skip-bad", action="store_true",
                   help="drop invalid samples (reported with their ids) instead of refusing to start")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from ..train.config import RunConfig
    from ..train.loop import train

    overrides = list(args.set) + (["data.skip_bad=true"] if getattr(args, "skip_bad", False) else [])
    cfg = RunConfig.from_file(args.config, overrides)
    final = train(cfg, resume=args.resume, overwrite=args.overwrite)
    if int(os.environ.get("RANK", "0")) == 0:
        print(f"done: {final}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Stand-alone entry (`python -m vlmkit.cli.train`), the same as `vlmkit train`; for torchrun."""
    from ..errors import VlmkitError

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    p = argparse.ArgumentParser(prog="vlmkit train", description="Train a model from a run config (YAML).")
    configure(p)
    args = p.parse_args(argv)
    try:
        return run(args)
    except VlmkitError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
