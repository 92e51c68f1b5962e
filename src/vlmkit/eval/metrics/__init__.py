"""Evaluation metrics as pure functions, one module per family, each matching its benchmark's official tool.

`vqa` (VQAv2, TextVQA, VizWiz), `multiple_choice` (ScienceQA, MMBench + CircularEval), `pope`, `grounding`
(RefCOCO Acc@0.5), `captioning` (BLEU, ROUGE-L, CIDEr-D) with `ptb` (its tokenizer), `exact` (GQA, captcha,
custom tasks). Every module's docstring lists the official rules and quirks it reproduces.
"""

from .captioning import bleu, caption_scores, cider_d, rouge_l
from .exact import exact_match, gqa_match, relaxed_match
from .grounding import accuracy_at, iou, parse_box
from .multiple_choice import circular_hits, mmbench_letter, scienceqa_correct, scienceqa_letter
from .pope import pope_answer, pope_scores
from .ptb import tokenize_captions, tokenizer_name
from .vqa import normalize_answer, textvqa_accuracy, vizwiz_accuracy, vqav2_accuracy

__all__ = [
    "accuracy_at", "bleu", "caption_scores", "cider_d", "circular_hits", "exact_match", "gqa_match", "iou",
    "mmbench_letter", "normalize_answer", "parse_box", "pope_answer", "pope_scores", "relaxed_match", "rouge_l",
    "scienceqa_correct", "scienceqa_letter", "textvqa_accuracy", "tokenize_captions", "tokenizer_name",
    "vizwiz_accuracy", "vqav2_accuracy",
]
