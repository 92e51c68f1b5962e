"""`vlmkit eval`: run a benchmark on a model (or score existing predictions) and write the report.

    vlmkit eval --model runs/x/final --task vqav2 --questions Q.json --annotations A.json --images val2014/
    vlmkit eval --model runs/x/final --task refcoco --data refcoco/ --split testA --images train2014/
    vlmkit eval --task vqav2 --predictions preds.jsonl --annotations A.json      # score only
    vlmkit eval --model runs/x/final --task shapes                               # synthetic, generated
    vlmkit eval --list-tasks
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from ..errors import VlmkitError
from .ask import add_model_args, model_directory, resolve_model


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("eval", help="evaluate a model on a benchmark (scores match the official tools)",
                       description="Run a benchmark task and write results.json, results.md, predictions.jsonl "
                                   "and prompts.jsonl to --out. An interrupted run resumes from predictions.jsonl.")
    add_model_args(p)
    p.add_argument("--task", help="task name (see --list-tasks)")
    p.add_argument("--list-tasks", action="store_true", help="list the tasks and the files each one reads")
    g = p.add_argument_group("task inputs")
    g.add_argument("--questions", type=Path, metavar="FILE", help="questions file (format depends on the task)")
    g.add_argument("--annotations", type=Path, metavar="FILE", help="annotations / ground-truth file")
    g.add_argument("--images", type=Path, metavar="DIR", help="folder holding the task's images")
    g.add_argument("--data", type=Path, metavar="DIR", help="dataset folder (scienceqa, refcoco*)")
    g.add_argument("--split", help="split to evaluate (scienceqa, refcoco*, karpathy captions); "
                                   "for synthetic tasks the generation seed")
    g.add_argument("--predictions", type=Path, metavar="FILE",
                   help="score this predictions file (JSONL / JSON) instead of running a model")
    r = p.add_argument_group("run")
    r.add_argument("--limit", type=int, default=None, metavar="N",
                   help="evaluate N items drawn with --seed (synthetic tasks: generate N, default 200)")
    r.add_argument("--seed", type=int, default=0, help="seed of the --limit subset (default 0)")
    r.add_argument("--batch-size", type=int, default=8, metavar="B", help="questions per generation batch")
    r.add_argument("--out", type=Path, default=None, metavar="DIR",
                   help="output folder (default: ./eval-<task>; with --predictions: the predictions' folder)")
    r.add_argument("--prompt", default=None, metavar="TEMPLATE",
                   help="prompt template replacing the task's, e.g. '{question}\\nAnswer briefly.' "
                        "(\\n is a newline; @FILE reads it from a file)")
    r.add_argument("--max-new-tokens", type=int, default=None, metavar="N", help="answer length limit")
    r.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(run=run)


def list_tasks() -> str:
    from ..eval import TASKS

    lines = []
    for name in TASKS.names():
        t = TASKS.get(name)
        lines.append(f"{name:<14}{t.description}\n{'':<14}{t.inputs}")
    return "\n".join(lines)


def read_template(value: str | None) -> str | None:
    if value is None:
        return None
    if value.startswith("@"):
        path = Path(value[1:]).expanduser()
        try:
            return path.read_text(encoding="utf-8").rstrip("\n")
        except OSError as e:
            raise VlmkitError(f"--prompt {value}: cannot read {path} ({e.strerror or e})") from None
    return value.replace("\\n", "\n")


def _summary(results: dict[str, Any], out: Path) -> str:
    metrics = results.get("metrics")
    if not metrics:
        return f"{results['task']}: {results.get('note', 'not scored')} -> {out}"
    shown = ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in metrics.items())
    return f"{results['task']}: {shown} ({results['n_scored']} items scored) -> {out / 'results.md'}"


def run(args: argparse.Namespace) -> int:
    from ..eval import EvalConfig, TaskSource, run_eval, score_predictions
    from ..eval.runner import weights_fingerprint
    from ..generation import Engine

    if args.list_tasks:
        print(list_tasks())
        return 0
    if not args.task:
        raise VlmkitError("give --task (see `vlmkit eval --list-tasks`)")
    synthetic = args.task in ("shapes", "grounding", "captcha")
    source = TaskSource(questions=args.questions, annotations=args.annotations, images=args.images, data=args.data,
                        split=args.split, count=args.limit if synthetic else None)
    template = read_template(args.prompt)
    if args.predictions is not None:
        out = args.out or args.predictions.parent
        config = EvalConfig(task=args.task, out_dir=out, limit=None, prompt=template)
        results = score_predictions(source, args.predictions, config)
    else:
        out = args.out or Path(f"eval-{args.task}")
        model, processor = resolve_model(args.model, args.device)
        config = EvalConfig(task=args.task, out_dir=out, batch_size=args.batch_size, limit=args.limit,
                            seed=args.seed, prompt=template, max_new_tokens=args.max_new_tokens,
                            model=str(args.model or "default"), progress=not args.no_progress,
                            model_weights=weights_fingerprint(model_directory(args.model)))
        results = run_eval(Engine(model, processor), source, config)
    print(_summary(results, out))
    return 0
