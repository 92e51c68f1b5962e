"""Entry point of the `vlmkit` command: dispatches subcommands and turns user errors into one clear line."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from ..errors import VlmkitError
from . import ask, chat, data, demo, eval, info, merge_lora, serve, train, web

COMMANDS = {
    "demo": demo, "ask": ask, "chat": chat, "train": train, "merge-lora": merge_lora, "data": data,
    "info": info, "serve": serve, "web": web, "eval": eval,
}


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="vlmkit", description="Build, train, evaluate and serve vision-language models.")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module in COMMANDS.values():
        module.add_parser(sub)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    args = parser().parse_args(argv)
    try:
        return int(args.run(args) or 0)
    except VlmkitError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
