"""Evaluation: standard VLM benchmarks scored exactly as their official tools score them.

- `metrics/`: pure metric functions, one module per family (VQA, multiple choice, POPE, grounding,
  captioning + PTB tokenizer, exact match);
- `tasks/`: the `TASKS` registry: a loader per official file format, the generic JSONL task and the
  synthetic tasks, each with its scorer and a default prompt template (`PROMPTS`, overridable);
- `runner.py`: batched, resumable, deterministic generation through `vlmkit.generation.Engine`, scoring, and
  the output directory; `report.py`: results.json / results.md;
- `lmms_adapter.py`: an optional lmms-eval model backed by vlmkit.
"""

from .runner import EvalConfig, read_predictions, run_eval, score, score_predictions, select_items
from .tasks import PROMPTS, TASKS, EvalItem, Task, TaskSource

__all__ = ["PROMPTS", "TASKS", "EvalConfig", "EvalItem", "Task", "TaskSource", "read_predictions", "run_eval",
           "score", "score_predictions", "select_items"]
