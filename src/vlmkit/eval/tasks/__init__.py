"""The task zoo: the `TASKS` registry of benchmarks, each a loader for its official file format, a scorer and a
default prompt template.

Prompt templates are data (`PROMPTS`, below): str.format strings over `{question}` and the item's text fields
(`{options}`, `{context}`, `{hint}`, ...); `vlmkit eval --prompt` replaces a task's template. The images are
placed by the model's chat template, so templates hold text only.
"""

from __future__ import annotations

from functools import partial

from ...data.synthetic.shapes import GROUNDING_PROMPT
from ...registry import Registry
from .base import LETTER_ANSWER, SHORT_ANSWER, EvalItem, Scores, Task, TaskSource, render_prompt
from .captions import load_captions, score_captions
from .choice import load_mmbench, load_scienceqa, score_mmbench, score_scienceqa
from .generic import load_jsonl, score_jsonl
from .pope import load_pope, score_pope
from .refcoco import load_refer, score_grounding
from .synthetic import load_synthetic, score_exact
from .vqa import (
    load_gqa,
    load_textvqa,
    load_vizwiz,
    load_vqav2,
    score_gqa,
    score_textvqa,
    score_vizwiz,
    score_vqav2,
)

PROMPTS: dict[str, str] = {
    "vqav2": f"{{question}}\n{SHORT_ANSWER}",
    "textvqa": f"{{question}}\n{SHORT_ANSWER}",
    "vizwiz": ("{question}\nWhen the provided information is insufficient, respond with 'Unanswerable'.\n"
               f"{SHORT_ANSWER}"),
    "gqa": f"{{question}}\n{SHORT_ANSWER}",
    "scienceqa": f"{{context}}{{question}}\n{{options}}\n{LETTER_ANSWER}",
    "mmbench": f"{{context}}{{question}}\n{{options}}\n{LETTER_ANSWER}",
    "pope": f"{{question}}\n{SHORT_ANSWER}",
    "refcoco": GROUNDING_PROMPT.format("{question}"),
    "coco-caption": "Provide a one-sentence caption for the provided image.",
    "jsonl": "{question}{choices_prompt}",
    "shapes": "{question}",
    "grounding": "{question}",
    "captcha": "{question}",
}
"""Default prompt of each task (LLaVA-1.5's evaluation prompts where it has one; grounding uses the CogVLM
grounding question that vlmkit's synthetic grounding data is trained with)."""

TASKS: Registry[Task] = Registry("eval task")


def _add(name: str, description: str, load, score, max_new_tokens: int, inputs: str, prompt: str | None = None,
         unit: str = "percent", needs_images: bool = True) -> None:
    TASKS.add(name, Task(name, description, load, score, PROMPTS[prompt or name], max_new_tokens, inputs, unit,
                         needs_images))


_add("vqav2", "VQAv2 accuracy (official vqaEval.py)", load_vqav2, score_vqav2, 16,
     "--questions Q.json --annotations A.json --images DIR")
_add("textvqa", "TextVQA accuracy (EvalAI / MMF)", load_textvqa, score_textvqa, 16,
     "--annotations TextVQA_0.5.1_val.json --images DIR")
_add("vizwiz", "VizWiz VQA accuracy (vizwiz.org script)", load_vizwiz, score_vizwiz, 16,
     "--annotations val.json --images DIR")
_add("gqa", "GQA accuracy (official eval.py)", load_gqa, score_gqa, 16,
     "--questions testdev_balanced_questions.json --images DIR")
_add("scienceqa", "ScienceQA multiple choice (LLaVA's rules)", load_scienceqa, score_scienceqa, 16,
     "--data DIR_WITH_problems.json [--split test] [--images DIR]")
_add("mmbench", "MMBench CircularEval (VLMEvalKit exact matching)", load_mmbench, score_mmbench, 16,
     "--questions MMBench_DEV_EN.tsv")
_add("pope", "POPE yes/no hallucination (official evaluate.py)", load_pope, score_pope, 16,
     "--questions coco_pope_random.json|DIR --images val2014/", unit="fraction")
for _name in ("refcoco", "refcoco+", "refcocog"):
    _add(_name, f"{_name} Acc@0.5", partial(load_refer, _name), score_grounding, 48,
         "--data DIR_WITH_refs(unc).p_and_instances.json --split testA --images train2014/ | --questions CONVERTED.jsonl",
         prompt="refcoco")
_add("coco-caption", "COCO captions BLEU / ROUGE-L / CIDEr-D (pycocoevalcap)", load_captions, score_captions, 64,
     "--annotations captions_val2014.json --images DIR", unit="fraction (CIDEr on its x10 scale)")
_add("jsonl", "generic JSONL questions (exact match / choices / boxes)", load_jsonl, score_jsonl, 64,
     "--questions FILE.jsonl [--images DIR]", needs_images=False)
_add("shapes", "synthetic shapes questions, exact match", partial(load_synthetic, "shapes"), score_exact, 16,
     "[--limit N] [--split SEED]")
_add("grounding", "synthetic shapes grounding, Acc@0.5", partial(load_synthetic, "grounding"), score_grounding, 48,
     "[--limit N] [--split SEED]")
_add("captcha", "captcha text, exact match (synthetic, or a folder of <text>.png)", partial(load_synthetic, "captcha"),
     score_exact, 16, "[--limit N] [--split SEED] | --data CAPTCHA_FOLDER")

__all__ = ["PROMPTS", "TASKS", "EvalItem", "Scores", "Task", "TaskSource", "render_prompt"]
