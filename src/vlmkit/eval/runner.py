"""Running an evaluation: pick the items, ask the model through the generation engine, score, write the report.

This module owns the run loop and the output directory:
- `prompts.jsonl`: the exact prompt of every selected item (its user message and the full templated text);
- `predictions.jsonl`: one line per answer, appended (flushed and fsynced) after every batch, so an
  interrupted run resumes where it stopped; batches are fixed slices of the selected items and a batch that
  was cut short is generated again whole, so a resumed run gives the same predictions as an uninterrupted one;
- `run.json`: what the predictions depend on (task, model and its weight files, prompt, generation settings,
  batch size, item ids); resuming with different settings, or after the weights at the model path changed, is
  refused;
- `results.json` / `results.md`: metrics and breakdowns (`report.py`).
Subsets (`--limit N`) are drawn with `random.Random(seed)` (whole groups, kept in file order); decoding is
greedy, so a run is deterministic.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tqdm import tqdm

from .. import __version__
from ..checkpoint import write_json
from ..errors import VlmkitError
from ..generation import Engine, GenerationConfig, Request
from ..templates import Message
from .metrics.multiple_choice import CIRCULAR_OFFSET
from .report import write_report
from .tasks import TASKS, EvalItem, Task, TaskSource, render_prompt
from .tasks.base import check_template

PREDICTIONS, PROMPTS, RUN = "predictions.jsonl", "prompts.jsonl", "run.json"
ID_KEYS = ("id", "question_id", "questionId", "image_id", "image")
TEXT_KEYS = ("prediction", "answer", "text", "caption")


@dataclass
class EvalConfig:
    """How to run one task. `model` and `model_weights` (see `weights_fingerprint`) are only recorded (and
    checked when resuming)."""

    task: str
    out_dir: Path
    batch_size: int = 8
    limit: int | None = None
    seed: int = 0
    prompt: str | None = None
    max_new_tokens: int | None = None
    model: str = ""
    model_weights: str = ""
    progress: bool = True


def weights_fingerprint(directory: str | Path | None) -> str:
    """Name, size and modification time of every safetensors file under a model directory (adapters too),
    hashed: a retrained or replaced checkpoint at the same path gets another fingerprint, without reading GBs."""
    if directory is None:  # a preset built on the spot: no files to tie the predictions to
        return ""
    root = Path(directory)
    stats = [(f.relative_to(root), f.stat()) for f in sorted(root.rglob("*.safetensors"))]
    facts = [f"{name}:{st.st_size}:{st.st_mtime_ns}" for name, st in stats]
    return hashlib.sha256("\n".join(facts).encode()).hexdigest()[:16] if facts else ""


# ------------------------------------------------------------------------------------------------- items
def select_items(items: Sequence[EvalItem], limit: int | None, seed: int = 0) -> list[EvalItem]:
    """At most `limit` items drawn with `random.Random(seed)`, whole groups at a time, in their original order."""
    if limit is None or limit >= len(items):
        return list(items)
    if limit < 1:
        raise VlmkitError(f"--limit {limit}: use a positive number of items")
    units: dict[str, list[int]] = {}
    for i, it in enumerate(items):
        units.setdefault(it.group or f"\0{it.id}", []).append(i)
    keys = list(units)
    random.Random(seed).shuffle(keys)
    chosen: list[int] = []
    for k in keys:
        if len(chosen) >= limit:
            break
        chosen.extend(units[k])
    return [items[i] for i in sorted(chosen)]


def check_unique(items: Sequence[EvalItem], task: str) -> None:
    seen: set[str] = set()
    for it in items:
        if it.id in seen:
            raise VlmkitError(f"task '{task}': item id {it.id!r} appears twice in the input")
        seen.add(it.id)


def check_images(items: Sequence[EvalItem], needs_images: bool = True) -> None:
    """Fail before generating when image files are missing (naming the first and the count)."""
    empty = next((it.id for it in items if not it.images), None) if needs_images else None
    if empty is not None:
        raise VlmkitError(f"item {empty} has no image: pass --images DIR (the folder with the task's images)")
    missing = [p for it in items for p in it.images if isinstance(p, (str, Path)) and not Path(p).is_file()]
    if missing:
        raise VlmkitError(f"{len(missing)} image file(s) not found, e.g. {missing[0]} (pass --images with the "
                          "folder that holds them)")


# ---------------------------------------------------------------------------------------------- prompting
def user_message(item: EvalItem, template: str) -> str:
    return render_prompt(template, item)


def prompt_record(item: EvalItem, content: str, engine: Engine) -> dict[str, Any]:
    n = len(item.images)
    text = engine.template.render([Message("user", content, n)], add_generation_prompt=True).text
    images = [str(p) if isinstance(p, (str, Path)) else f"<{type(p).__name__}>" for p in item.images]
    return {"id": item.id, "messages": [{"role": "user", "content": content}], "images": images, "text": text}


def write_jsonl_atomic(path: Path, records: Sequence[Mapping[str, Any]]) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
    os.replace(tmp, path)


# -------------------------------------------------------------------------------------------- predictions
class PredictionLog:
    """`predictions.jsonl` in an output directory: read back (dropping a torn last line), appended per batch."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def load(self) -> dict[str, dict[str, Any]]:
        if not self.path.exists():
            return {}
        data = self.path.read_bytes()
        end = data.rfind(b"\n") + 1
        if end < len(data):  # a line cut by the interruption: drop it
            with open(self.path, "r+b") as f:
                f.truncate(end)
        done: dict[str, dict[str, Any]] = {}
        for i, line in enumerate(data[:end].decode("utf-8").splitlines(), 1):
            try:
                rec = json.loads(line)
                done[str(rec["id"])] = rec
            except (json.JSONDecodeError, KeyError, TypeError):
                raise VlmkitError(f"{self.path}, line {i}: not a prediction record; delete the file or use "
                                  "another --out") from None
        return done

    def append(self, records: Sequence[Mapping[str, Any]]) -> None:
        with open(self.path, "a", encoding="utf-8") as f:
            f.write("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
            f.flush()
            os.fsync(f.fileno())


def run_record(config: EvalConfig, task: Task, template: str, max_new_tokens: int,
               items: Sequence[EvalItem]) -> dict[str, Any]:
    digest = hashlib.sha256("\n".join(it.id for it in items).encode()).hexdigest()
    return {"task": task.name, "model": config.model, "model_weights": config.model_weights,
            "prompt_template": template, "max_new_tokens": max_new_tokens,
            "batch_size": config.batch_size, "limit": config.limit, "seed": config.seed, "items_sha256": digest,
            "n_items": len(items)}


def check_resume(out: Path, record: dict[str, Any]) -> None:
    """Refuse to append to predictions made under other settings."""
    run_path, preds = out / RUN, out / PREDICTIONS
    if not preds.exists():
        return
    if not run_path.exists():
        raise VlmkitError(f"{preds} exists but {run_path} does not: use another --out, or delete the predictions")
    try:
        old = json.loads(run_path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise VlmkitError(f"{run_path}: unreadable ({e}); use another --out") from None
    differ = sorted(k for k in record if old.get(k) != record[k])
    if differ:
        raise VlmkitError(f"{out} holds predictions of a different run ({', '.join(differ)} differ); use another "
                          "--out, or delete it to start over")


def generate_predictions(engine: Engine, items: Sequence[EvalItem], contents: Sequence[str],
                         config: GenerationConfig, log: PredictionLog, batch_size: int,
                         progress: bool = True, desc: str = "eval") -> dict[str, str]:
    """Answer every item not yet in `log`, one fixed batch at a time; returns {id: prediction} for all items."""
    done = log.load()
    finished = sum(1 for it in items if it.id in done)
    bar = tqdm(total=len(items), initial=finished, desc=desc, unit="q", disable=not progress)
    try:
        for start in range(0, len(items), batch_size):
            batch = list(range(start, min(start + batch_size, len(items))))
            todo = [i for i in batch if items[i].id not in done]
            if not todo:
                continue
            requests = [Request([{"role": "user", "content": contents[i]}], list(items[i].images)) for i in batch]
            results = engine.generate(requests, config, batch_size=len(batch))
            records = [{"id": items[i].id, "prediction": r.text, "finish_reason": r.finish_reason}
                       for i, r in zip(batch, results) if i in todo]
            log.append(records)
            done.update({r["id"]: r for r in records})
            bar.update(len(records))
    finally:
        bar.close()
    return {it.id: str(done[it.id]["prediction"]) for it in items}


# ------------------------------------------------------------------------------------------------ scoring
def score(task: Task, items: Sequence[EvalItem], predictions: Mapping[str, str]) -> dict[str, Any]:
    """Score the items that have a prediction and a ground truth; the report dict (without run settings)."""
    answered = [it for it in items if it.id in predictions]
    scored = [it for it in answered if it.target is not None]
    out: dict[str, Any] = {"task": task.name, "description": task.description, "unit": task.unit,
                           "n_items": len(items), "n_predicted": len(answered), "n_scored": len(scored)}
    if not scored:
        out["note"] = "no ground truth for these items: predictions were written but not scored"
        return out
    out.update(task.score(scored, predictions).to_dict())
    return out


def read_predictions(path: Path) -> dict[str, str]:
    """{id: text} from JSON Lines or a JSON list / object of prediction records (our own or the usual shapes).

    A record with `round_id` k > 0 (LLaVA's MMBench answers) stands for the rotation `question_id + k * 1e6`.
    """
    from .tasks.base import read_json, read_jsonl

    data = read_json(path) if path.suffix == ".json" else read_jsonl(path)
    if isinstance(data, dict):
        return {str(k): str(v) for k, v in data.items()}
    out: dict[str, str] = {}
    for i, rec in enumerate(data, 1):
        key = next((k for k in ID_KEYS if isinstance(rec, dict) and k in rec), None)
        text = next((k for k in TEXT_KEYS if isinstance(rec, dict) and k in rec), None)
        if key is None or text is None:
            raise VlmkitError(f"{path}, record {i}: needs an id field ({', '.join(ID_KEYS)}) and a text field "
                              f"({', '.join(TEXT_KEYS)})")
        ident = rec[key]
        if isinstance(rec.get("round_id"), int) and rec["round_id"] > 0:  # LLaVA's MMBench --all-rounds answers
            ident = int(ident) + rec["round_id"] * CIRCULAR_OFFSET
        out[str(ident)] = str(rec[text])
    return out


# ---------------------------------------------------------------------------------------------------- runs
def load_task(config: EvalConfig, source: TaskSource) -> tuple[Task, list[EvalItem]]:
    task = TASKS.get(config.task)
    items = task.load(source)
    check_unique(items, task.name)
    return task, select_items(items, config.limit, config.seed)


def run_eval(engine: Engine, source: TaskSource, config: EvalConfig) -> dict[str, Any]:
    """Generate (resuming) and score one task; writes the output directory and returns the results."""
    if config.batch_size < 1:
        raise VlmkitError(f"--batch-size {config.batch_size}: use 1 or more")
    task, items = load_task(config, source)
    template = config.prompt if config.prompt is not None else task.prompt
    check_template(template)
    max_new = config.max_new_tokens or task.max_new_tokens
    if "{question}" in template and any(not it.question for it in items):
        raise VlmkitError(f"task '{task.name}': items have no question text (pass --questions: {task.inputs})")
    contents = [user_message(it, template) for it in items]
    check_images(items, task.needs_images)
    out = Path(config.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    record = run_record(config, task, template, max_new, items)
    check_resume(out, record)
    write_json(out / RUN, record)
    write_jsonl_atomic(out / PROMPTS, [prompt_record(it, c, engine) for it, c in zip(items, contents)])
    gen = GenerationConfig(max_new_tokens=max_new)
    predictions = generate_predictions(engine, items, contents, gen, PredictionLog(out / PREDICTIONS),
                                       config.batch_size, config.progress, desc=f"eval {task.name}")
    results = score(task, items, predictions)
    results.update(model=config.model, prompt_template=template, generation={"max_new_tokens": max_new,
                   "do_sample": False}, limit=config.limit, seed=config.seed, batch_size=config.batch_size,
                   files={"predictions": PREDICTIONS, "prompts": PROMPTS}, vlmkit_version=__version__)
    write_report(out, results)
    return results


def score_predictions(source: TaskSource, predictions_path: Path, config: EvalConfig) -> dict[str, Any]:
    """Score an existing predictions file against the task's annotations (no model); writes the report."""
    task = TASKS.get(config.task)
    items = task.load(source)
    check_unique(items, task.name)
    predictions = read_predictions(predictions_path)
    matched = [it for it in items if it.id in predictions]
    if not matched:
        example = next(iter(predictions), "(none)")
        raise VlmkitError(f"none of the {len(predictions)} prediction ids in {predictions_path} (e.g. {example!r}) "
                          f"is an id of task '{task.name}' (e.g. {items[0].id!r})" if items else
                          f"task '{task.name}' loaded no items")
    results = score(task, matched, predictions)
    results.update(predictions_file=str(predictions_path), n_missing=len(items) - len(matched),
                   vlmkit_version=__version__)
    write_report(Path(config.out_dir), results)
    return results
