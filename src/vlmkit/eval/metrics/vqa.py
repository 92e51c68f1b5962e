"""VQA accuracy as the official tools compute it: VQAv2 (`vqaEval.py`), TextVQA (EvalAI/MMF) and VizWiz.

This module owns answer normalization and the soft accuracy `min(1, matches / 3)` averaged over the
leave-one-out subsets of the human answers (k matching answers of 10 give 0, .3, .6, .9, 1), with each
tool's quirks:

- VQAv2 (GT-Vision-Lab/VQA `vqaEval.py`): the prediction and the answers are normalized only when the
  answers are not all identical (after replacing newlines/tabs and stripping); punctuation handling depends
  on whether a mark touches a space anywhere in the text or the text has a digit,digit comma; the period
  regex carries a no-op lookahead `(?!<=\\d)` and `re.UNICODE` is passed as the *count* argument, so at most
  32 periods are removed; `none` maps to `0`; the contraction map is applied after lower-casing, so its
  capitalized keys ("Im", "Ive", "Id've") never match.
- TextVQA (MMF `EvalAIAnswerProcessor`, used by the EvalAI server and LLaVA): both sides are always
  normalized, after lower-casing, deleting `,` and `?` and splitting `'s` into ` 's`; exactly 10 answers.
- VizWiz (the vizwiz.org evaluation script): the prediction is always normalized, the human answers are
  compared as stored; its contraction map writes most apostrophes as U+2019, so e.g. "dont" becomes "don’t".

Leave-one-out is by position (the official VQAv2 script removes answer dicts equal to the left-out one; the
released annotations number every answer, so this is the same).
"""

from __future__ import annotations

import re
from collections.abc import Sequence

CONTRACTIONS: dict[str, str] = {
    "aint": "ain't", "arent": "aren't", "cant": "can't", "couldve": "could've", "couldnt": "couldn't",
    "couldn'tve": "couldn't've", "couldnt've": "couldn't've", "didnt": "didn't", "doesnt": "doesn't",
    "dont": "don't", "hadnt": "hadn't", "hadnt've": "hadn't've", "hadn'tve": "hadn't've", "hasnt": "hasn't",
    "havent": "haven't", "hed": "he'd", "hed've": "he'd've", "he'dve": "he'd've", "hes": "he's", "howd": "how'd",
    "howll": "how'll", "hows": "how's", "Id've": "I'd've", "I'dve": "I'd've", "Im": "I'm", "Ive": "I've",
    "isnt": "isn't", "itd": "it'd", "itd've": "it'd've", "it'dve": "it'd've", "itll": "it'll", "let's": "let's",
    "maam": "ma'am", "mightnt": "mightn't", "mightnt've": "mightn't've", "mightn'tve": "mightn't've",
    "mightve": "might've", "mustnt": "mustn't", "mustve": "must've", "neednt": "needn't", "notve": "not've",
    "oclock": "o'clock", "oughtnt": "oughtn't", "ow's'at": "'ow's'at", "'ows'at": "'ow's'at",
    "'ow'sat": "'ow's'at", "shant": "shan't", "shed've": "she'd've", "she'dve": "she'd've", "she's": "she's",
    "shouldve": "should've", "shouldnt": "shouldn't", "shouldnt've": "shouldn't've",
    "shouldn'tve": "shouldn't've", "somebody'd": "somebodyd", "somebodyd've": "somebody'd've",
    "somebody'dve": "somebody'd've", "somebodyll": "somebody'll", "somebodys": "somebody's",
    "someoned": "someone'd", "someoned've": "someone'd've", "someone'dve": "someone'd've",
    "someonell": "someone'll", "someones": "someone's", "somethingd": "something'd",
    "somethingd've": "something'd've", "something'dve": "something'd've", "somethingll": "something'll",
    "thats": "that's", "thered": "there'd", "thered've": "there'd've", "there'dve": "there'd've",
    "therere": "there're", "theres": "there's", "theyd": "they'd", "theyd've": "they'd've",
    "they'dve": "they'd've", "theyll": "they'll", "theyre": "they're", "theyve": "they've", "twas": "'twas",
    "wasnt": "wasn't", "wed've": "we'd've", "we'dve": "we'd've", "weve": "we've", "werent": "weren't",
    "whatll": "what'll", "whatre": "what're", "whats": "what's", "whatve": "what've", "whens": "when's",
    "whered": "where'd", "wheres": "where's", "whereve": "where've", "whod": "who'd", "whod've": "who'd've",
    "who'dve": "who'd've", "wholl": "who'll", "whos": "who's", "whove": "who've", "whyll": "why'll",
    "whyre": "why're", "whys": "why's", "wont": "won't", "wouldve": "would've", "wouldnt": "wouldn't",
    "wouldnt've": "wouldn't've", "wouldn'tve": "wouldn't've", "yall": "y'all", "yall'll": "y'all'll",
    "y'allll": "y'all'll", "yall'd've": "y'all'd've", "y'alld've": "y'all'd've", "y'all'dve": "y'all'd've",
    "youd": "you'd", "youd've": "you'd've", "you'dve": "you'd've", "youll": "you'll", "youre": "you're",
    "youve": "you've",
}


def _vizwiz_contractions() -> dict[str, str]:
    """The VizWiz script's copy of the map: U+2019 apostrophes except in its first five entries, two ASCII
    keys ("couldn'tve", "hadn'tve") and three ASCII values (we've, where's, who've)."""
    out: dict[str, str] = {}
    for i, (k, v) in enumerate(CONTRACTIONS.items()):
        if i < 5:
            out[k] = v
            continue
        key = k if k in ("couldn'tve", "hadn'tve") else k.replace("'", "\u2019")
        out[key] = v if k in ("weve", "wheres", "whove") else v.replace("'", "\u2019")
    return out


VIZWIZ_CONTRACTIONS = _vizwiz_contractions()
NUMBER_WORDS = {"none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5",
                "six": "6", "seven": "7", "eight": "8", "nine": "9", "ten": "10"}
ARTICLES = ("a", "an", "the")
PUNCT = (";", "/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-", ">", "<", "@", "`", ",", "?", "!")
_PERIOD_STRIP = re.compile(r"(?!<=\d)(\.)(?!\d)")  # sic: a lookahead, not a lookbehind
_COMMA_STRIP = re.compile(r"(\d)(,)(\d)")
_EVALAI_COMMA_STRIP = re.compile(r"(?<=\d)(,)+(?=\d)")
_OFFICIAL_PERIOD_COUNT = 32  # re.UNICODE, passed where `count` goes


def process_punctuation(text: str, comma_strip: re.Pattern[str] = _COMMA_STRIP) -> str:
    """Delete a mark when it touches a space anywhere in `text` (or `text` has digit,digit), else make it a space;
    then drop periods not followed by a digit."""
    out = text
    for p in PUNCT:
        if (p + " " in text or " " + p in text) or comma_strip.search(text) is not None:
            out = out.replace(p, "")
        else:
            out = out.replace(p, " ")
    return _PERIOD_STRIP.sub("", out, count=_OFFICIAL_PERIOD_COUNT)


def process_digit_article(text: str, contractions: dict[str, str] = CONTRACTIONS) -> str:
    """Lower-case, number words to digits, drop articles, apply the contraction map, single spaces."""
    words = [NUMBER_WORDS.get(w, w) for w in text.lower().split()]
    words = [w for w in words if w not in ARTICLES]
    return " ".join(contractions.get(w, w) for w in words)


def normalize_answer(text: str) -> str:
    """VQAv2 answer normalization (punctuation, then digits / articles / contractions)."""
    return process_digit_article(process_punctuation(text))


def normalize_textvqa(text: str) -> str:
    """MMF's `EvalAIAnswerProcessor` (TextVQA): tokenize, clean whitespace, then the VQA normalization."""
    text = text.lower().replace(",", "").replace("?", "").replace("'s", " 's").strip()
    text = text.replace("\n", " ").replace("\t", " ").strip()
    return process_digit_article(process_punctuation(text, _EVALAI_COMMA_STRIP))


def normalize_vizwiz(text: str) -> str:
    """The VizWiz script's prediction normalization (its own contraction map)."""
    return process_digit_article(process_punctuation(_clean(text)), VIZWIZ_CONTRACTIONS)


def _clean(text: str) -> str:
    return text.replace("\n", " ").replace("\t", " ").strip()


def leave_one_out_accuracy(prediction: str, answers: Sequence[str]) -> float:
    """Mean over i of min(1, #{j != i: answers[j] == prediction} / 3), summed in the official order."""
    if not answers:
        return 0.0
    accs = []
    for i in range(len(answers)):
        matches = sum(1 for j, a in enumerate(answers) if j != i and a == prediction)
        accs.append(min(1, float(matches) / 3))
    return float(sum(accs)) / len(accs)


def vqav2_accuracy(prediction: str, answers: Sequence[str]) -> float:
    """One question's VQAv2 accuracy in [0, 1] (normalization only when the answers disagree)."""
    gts = [_clean(a) for a in answers]
    pred = _clean(prediction)
    if len(set(gts)) > 1:
        gts = [normalize_answer(a) for a in gts]
        pred = normalize_answer(pred)
    return leave_one_out_accuracy(pred, gts)


def textvqa_accuracy(prediction: str, answers: Sequence[str]) -> float:
    """One question's TextVQA accuracy in [0, 1] (both sides always normalized)."""
    return leave_one_out_accuracy(normalize_textvqa(prediction), [normalize_textvqa(a) for a in answers])


def vizwiz_accuracy(prediction: str, answers: Sequence[str]) -> float:
    """One question's VizWiz accuracy in [0, 1] (prediction normalized, answers as stored)."""
    return leave_one_out_accuracy(normalize_vizwiz(prediction), list(answers))


def mean_percent(values: Sequence[float]) -> float:
    """100 * mean, summed left to right like the official scripts (0.0 for no values)."""
    return 100 * float(sum(values)) / len(values) if values else 0.0
