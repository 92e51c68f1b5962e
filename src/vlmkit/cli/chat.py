"""`vlmkit chat`: an interactive multi-turn chat with streaming (typewriter) output over a `ChatSession`.

Reads one message per line from stdin (a terminal or a pipe). Commands: `image PATH` attaches an image to the
next message, `clear` starts a new conversation, `stop` / `quit` / `exit` (or end of input) leave. Prompts and
the banner are shown only on a terminal, so piped output holds just the answers, one per line.
"""

from __future__ import annotations

import argparse
import sys
from typing import TextIO

from PIL import Image

from ..errors import VlmkitError
from ..generation import ChatSession
from .ask import add_model_args, add_sampling_args, generation_config, open_image, resolve_model

QUIT = ("stop", "quit", "exit")
BANNER = ("vlmkit chat - type a message and press enter. Commands: 'image PATH' attaches an image to your next "
          "message, 'clear' starts over, 'quit' leaves.")


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("chat", help="chat with a model about images (interactive, streaming)",
                       description=BANNER)
    add_model_args(p)
    p.add_argument("--image", metavar="PATH", help="an image for the first message")
    add_sampling_args(p)
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    image = open_image(args.image) if args.image else None
    config = generation_config(args)
    model, processor = resolve_model(args.model, args.device)
    session = ChatSession(model, processor, config=config)
    return repl(session, image, sys.stdin, sys.stdout)


def repl(session: ChatSession, image: Image.Image | None, stdin: TextIO, stdout: TextIO) -> int:
    """Read messages and commands until quit or end of input; stream every answer."""
    interactive = stdin.isatty()
    if interactive:
        print(BANNER, file=stdout)
    pending = image
    while True:
        line = _read(stdin, stdout, interactive)
        if line is None or line in QUIT:
            return 0
        if not line:
            continue
        if line == "clear":
            session.clear()
            pending = None
            _note("conversation cleared", stdout, interactive)
        elif line.split(maxsplit=1)[0] == "image":
            pending = _attach(line, pending, stdout, interactive)
        elif _answer(session, line, pending, stdout, interactive):
            pending = None


def _read(stdin: TextIO, stdout: TextIO, interactive: bool) -> str | None:
    if interactive:
        stdout.write("user> ")
        stdout.flush()
    try:
        raw = stdin.readline()
    except KeyboardInterrupt:
        return None
    return raw.strip() if raw else None


def _attach(line: str, pending: Image.Image | None, stdout: TextIO, interactive: bool) -> Image.Image | None:
    parts = line.split(maxsplit=1)
    if len(parts) < 2:
        print("error: usage: image PATH", file=sys.stderr)
        return pending
    try:
        image = open_image(parts[1])
    except VlmkitError as e:
        print(f"error: {e}", file=sys.stderr)
        return pending
    _note(f"image {parts[1]} attached to your next message", stdout, interactive)
    return image


def _answer(session: ChatSession, text: str, image: Image.Image | None, stdout: TextIO, interactive: bool) -> bool:
    """Stream one answer; False when it failed (the turn is then not part of the history)."""
    if interactive:
        stdout.write("vlmkit> ")
    ok = False
    try:
        for delta in session.stream(text, image):
            stdout.write(delta)
            stdout.flush()
        ok = True
    except KeyboardInterrupt:
        stdout.write(" (interrupted)")
    except VlmkitError as e:
        print(f"error: {e}", file=sys.stderr)
    stdout.write("\n")
    stdout.flush()
    return ok


def _note(message: str, stdout: TextIO, interactive: bool) -> None:
    """Status lines go to stderr on pipes so stdout holds only answers."""
    print(f"({message})", file=stdout if interactive else sys.stderr)
