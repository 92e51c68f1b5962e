"""`vlmkit demo`: the first thing a new user runs — the embedded default model seeing, answering and pointing.

Generates held-out images (a seed the model never trained on), asks counting, colour, position, captcha and
grounding questions, prints question / expected / answer, scores a held-out set (exact match; Acc@0.5 for
boxes) and writes an image with the predicted (red) and true (green) boxes drawn.
"""

from __future__ import annotations

import argparse
import time
from collections import defaultdict
from pathlib import Path

from PIL import Image, ImageDraw

from ..data.sample import Sample
from ..data.synthetic import generate
from ..eval.metrics.grounding import parse_box
from ..generation import Engine, GenerationConfig
from ..generation.engine import Request
from ..train.dataset import prompt_messages
from ..train.validation import answer_is_right
from .ask import resolve_model

HELD_OUT_SEED = 2026
SHOWCASE = ("count", "color", "position", "grounding", "captcha")


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="run the out-of-the-box demo on the default model",
                       description="Ask the default model questions about freshly generated images.")
    p.add_argument("--model", default=None, help="model directory (default: the embedded default model)")
    p.add_argument("--n", type=int, default=200, help="held-out samples to score (default: 200)")
    p.add_argument("--seed", type=int, default=HELD_OUT_SEED, help="generation seed of the held-out set")
    p.add_argument("--out", default="demo_out", help="where the image with boxes goes (default: demo_out/)")
    p.add_argument("--batch-size", type=int, default=32)
    p.set_defaults(run=run)


def held_out(n: int, seed: int) -> list[Sample]:
    """A mix like the training data: shapes questions (incl. grounding) and captchas, 3:1."""
    n_captcha = max(1, n // 4)
    return generate("shapes", n - n_captcha, seed) + generate("captcha", n_captcha, seed)


def question_of(sample: Sample) -> str:
    return next(m["content"] for m in sample.messages if m["role"] == "user").replace("<image>", "").strip()


def answer_all(engine: Engine, samples: list[Sample], batch_size: int) -> list[str]:
    config = GenerationConfig(max_new_tokens=24)
    requests = [Request(prompt_messages(s), list(s.images)) for s in samples]  # the prompt as trained
    return [r.text for r in engine.generate(requests, config, batch_size=batch_size)]


def print_table(samples: list[Sample], answers: list[str]) -> None:
    shown = {}
    for s, a in zip(samples, answers):
        shown.setdefault(s.meta["task"], (s, a))
    rows = [(task, *shown[task]) for task in SHOWCASE if task in shown]
    print(f"{'task':<10} {'question':<58} {'expected':<20} {'answer':<20}")
    for task, s, a in rows:
        mark = "ok" if answer_is_right(a, s) else "MISS"
        print(f"{task:<10} {_clip(question_of(s), 57):<58} {s.meta['answer']:<20} {_clip(a, 20):<20} {mark}")


def _clip(text: str, width: int) -> str:
    text = text.replace("\n", " ")
    return text if len(text) <= width else text[: width - 3] + "..."


def print_scores(samples: list[Sample], answers: list[str]) -> None:
    groups: dict[str, list[bool]] = defaultdict(list)
    for s, a in zip(samples, answers):
        key = s.meta["task"] if s.meta["task"] in ("grounding", "captcha") else "shapes questions"
        groups[key].append(answer_is_right(a, s))
    total = [ok for v in groups.values() for ok in v]
    print(f"\naccuracy on {len(total)} held-out samples (seed {samples[0].id.split('-')[1]}): "
          f"{100 * sum(total) / len(total):.1f}%")
    for key, oks in sorted(groups.items()):
        metric = "Acc@0.5" if key == "grounding" else "exact match"
        print(f"  {key:<17} {100 * sum(oks) / len(oks):5.1f}% {metric} ({sum(oks)}/{len(oks)})")


def draw_grounding(samples: list[Sample], answers: list[str], out: Path, count: int = 6) -> Path | None:
    picked = [(s, a) for s, a in zip(samples, answers) if s.meta["task"] == "grounding"][:count]
    if not picked:
        return None
    scale = 3
    tiles = []
    for s, a in picked:
        img = s.images[0].convert("RGB").resize((s.images[0].width * scale, s.images[0].height * scale))
        d = ImageDraw.Draw(img)
        d.rectangle([v * scale for v in s.meta["bbox"]], outline=(0, 170, 0), width=2)
        box = parse_box(a, *s.meta["image_size"])
        if box is not None:
            d.rectangle([v * scale for v in box], outline=(220, 0, 0), width=2)
        d.text((4, 2), s.meta.get("ref", ""), fill=(0, 0, 0))
        tiles.append(img)
    w, h = tiles[0].size
    sheet = Image.new("RGB", (w * len(tiles), h), "white")
    for i, t in enumerate(tiles):
        sheet.paste(t, (i * w, 0))
    out.mkdir(parents=True, exist_ok=True)
    path = out / "grounding.png"
    sheet.save(path)
    return path


def run(args: argparse.Namespace) -> int:
    t0 = time.perf_counter()
    model, processor = resolve_model(args.model)
    n_params = sum(p.numel() for p in model.parameters())
    print(f"model: {model.config.name or args.model} ({n_params / 1e6:.1f}M parameters, "
          f"{model.num_image_tokens} tokens per image), loaded in {time.perf_counter() - t0:.1f}s\n")
    samples = held_out(args.n, args.seed)
    answers = answer_all(Engine(model, processor), samples, args.batch_size)
    print_table(samples, answers)
    print_scores(samples, answers)
    path = draw_grounding(samples, answers, Path(args.out))
    if path is not None:
        print(f"\npredicted boxes (red) vs. truth (green): {path}")
    print(f"done in {time.perf_counter() - t0:.1f}s")
    return 0
