"""Caption metrics as pycocoevalcap computes them: BLEU-1..4, ROUGE-L and CIDEr-D, on PTB-tokenized text.

This module owns the scorers (inputs are already tokenized: space-separated, lower-cased, see `ptb.py`):
- BLEU (`bleu_scorer.py`): corpus-level, clipped n-gram counts, the "closest" reference length (ties to the
  shorter), +1e-15 / +1e-9 smoothing of every ratio, brevity penalty exp(1 - r/c) when c < r;
- ROUGE-L (`rouge.py`): LCS-based F with beta = 1.2, the best precision and best recall over references,
  tokens split on single spaces (an empty caption is one empty token), averaged with numpy;
- CIDEr-D (`cider_scorer.py`): n = 1..4 tf-idf vectors with document frequencies from the references of
  the evaluated set, idf = log(N images) - log(max(1, df)), clipped dot products, Gaussian length penalty
  (sigma = 6) where the quirk of the official code counts a caption's length as its number of bigrams,
  mean over n, mean over references, x10, mean over images (numpy arithmetic as in the original).
`caption_scores` tokenizes both sides and returns all of them; `tokenize` records which tokenizer ran.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from .ptb import tokenize_captions, tokenizer_name

NGram = tuple[str, ...]


def ngram_counts(sentence: str, n: int = 4) -> dict[NGram, int]:
    """Counts of the 1..n-grams of `sentence.split()`, in the official insertion order."""
    words = sentence.split()
    counts: dict[NGram, int] = defaultdict(int)
    for k in range(1, n + 1):
        for i in range(len(words) - k + 1):
            counts[tuple(words[i:i + k])] += 1
    return counts


# ---------------------------------------------------------------------------------------------------- BLEU
def _bleu_stats(hyp: str, refs: Sequence[str], n: int) -> tuple[int, int, list[int], list[int]]:
    """(test length, closest reference length, guesses per order, clipped matches per order)."""
    max_counts: dict[NGram, int] = {}
    ref_lens = []
    for ref in refs:
        ref_lens.append(len(ref.split()))
        for gram, c in ngram_counts(ref, n).items():
            max_counts[gram] = max(max_counts.get(gram, 0), c)
    test_len = len(hyp.split())
    ref_len = min((abs(r - test_len), r) for r in ref_lens)[1]
    guess = [max(0, test_len - k + 1) for k in range(1, n + 1)]
    correct = [0] * n
    for gram, c in ngram_counts(hyp, n).items():
        correct[len(gram) - 1] += min(max_counts.get(gram, 0), c)
    return test_len, ref_len, guess, correct


def bleu(refs: Mapping[Any, Sequence[str]], hyps: Mapping[Any, str], n: int = 4) -> list[float]:
    """Corpus BLEU-1..n of the hypotheses against their references (pycocoevalcap `Bleu(n)`)."""
    small, tiny = 1e-9, 1e-15
    test_len = ref_len = 0
    guess, correct = [0] * n, [0] * n
    for key in refs:
        t, r, g, c = _bleu_stats(hyps[key], refs[key], n)
        test_len, ref_len = test_len + t, ref_len + r
        guess = [a + b for a, b in zip(guess, g)]
        correct = [a + b for a, b in zip(correct, c)]
    scores, product = [], 1.0
    for k in range(n):
        product *= float(correct[k] + tiny) / (guess[k] + small)
        scores.append(product ** (1.0 / (k + 1)))
    ratio = (test_len + tiny) / (ref_len + small)
    if ratio < 1:
        scores = [s * math.exp(1 - 1 / ratio) for s in scores]
    return scores


# ------------------------------------------------------------------------------------------------- ROUGE-L
def lcs_length(a: Sequence[str], b: Sequence[str]) -> int:
    """Length of the longest common subsequence of two token lists."""
    if len(a) < len(b):
        a, b = b, a
    prev = [0] * (len(b) + 1)
    for x in a:
        cur = [0] * (len(b) + 1)
        for j, y in enumerate(b, 1):
            cur[j] = prev[j - 1] + 1 if x == y else max(prev[j], cur[j - 1])
        prev = cur
    return prev[-1]


def rouge_l_single(hyp: str, refs: Sequence[str], beta: float = 1.2) -> float:
    """ROUGE-L F of one hypothesis: best precision and best recall over the references."""
    cand = hyp.split(" ")
    precs, recs = [], []
    for ref in refs:
        toks = ref.split(" ")
        lcs = lcs_length(toks, cand)
        precs.append(lcs / float(len(cand)))
        recs.append(lcs / float(len(toks)))
    p, r = max(precs), max(recs)
    if p != 0 and r != 0:
        return ((1 + beta ** 2) * p * r) / float(r + beta ** 2 * p)
    return 0.0


def rouge_l(refs: Mapping[Any, Sequence[str]], hyps: Mapping[Any, str]) -> tuple[float, list[float]]:
    """(mean ROUGE-L, per-image ROUGE-L) in the order of `refs`."""
    scores = [rouge_l_single(hyps[k], refs[k]) for k in refs]
    return float(np.mean(np.array(scores))), scores


# ------------------------------------------------------------------------------------------------- CIDEr-D
class _Cider:
    """tf-idf vectors and similarities of one evaluated set (document frequencies from its references)."""

    def __init__(self, refs: list[list[dict[NGram, int]]], n: int, sigma: float) -> None:
        self.n, self.sigma = n, sigma
        self.df: dict[NGram, float] = defaultdict(float)
        for image_refs in refs:
            for gram in {g for ref in image_refs for g in ref}:
                self.df[gram] += 1
        self.log_n = np.log(float(len(refs)))

    def vector(self, counts: dict[NGram, int]) -> tuple[list[dict[NGram, float]], list[Any], int]:
        vec: list[dict[NGram, float]] = [defaultdict(float) for _ in range(self.n)]
        norm: list[Any] = [0.0] * self.n
        length = 0
        for gram, tf in counts.items():
            k = len(gram) - 1
            vec[k][gram] = float(tf) * (self.log_n - np.log(max(1.0, self.df[gram])))
            norm[k] += pow(vec[k][gram], 2)
            if k == 1:  # sic: the official length is the number of bigrams
                length += tf
        return vec, [np.sqrt(x) for x in norm], length

    def similarity(self, hyp: tuple, ref: tuple) -> np.ndarray:
        (vh, nh, lh), (vr, nr, lr) = hyp, ref
        delta = float(lh - lr)
        val = np.array([0.0 for _ in range(self.n)])
        for k in range(self.n):
            for gram in vh[k]:
                val[k] += min(vh[k][gram], vr[k][gram]) * vr[k][gram]
            if nh[k] != 0 and nr[k] != 0:
                val[k] /= nh[k] * nr[k]
            val[k] *= np.e ** (-(delta ** 2) / (2 * self.sigma ** 2))
        return val


def cider_d(refs: Mapping[Any, Sequence[str]], hyps: Mapping[Any, str], n: int = 4,
            sigma: float = 6.0) -> tuple[float, list[float]]:
    """(CIDEr-D of the set, per-image CIDEr-D) as pycocoevalcap's `Cider` (x10 scale)."""
    keys = list(refs)
    cooked_refs = [[ngram_counts(r, n) for r in refs[k]] for k in keys]
    scorer = _Cider(cooked_refs, n, sigma)
    scores = []
    for k, image_refs in zip(keys, cooked_refs):
        hyp = scorer.vector(ngram_counts(hyps[k], n))
        total = np.array([0.0 for _ in range(n)])
        for ref in image_refs:
            total += scorer.similarity(hyp, scorer.vector(ref))
        score = np.mean(total)
        score /= len(image_refs)
        score *= 10.0
        scores.append(score)
    return float(np.mean(np.array(scores))), [float(s) for s in scores]


# ----------------------------------------------------------------------------------------------------- all
def caption_scores(refs: Mapping[Any, Sequence[str]], hyps: Mapping[Any, str], tokenize: str = "auto",
                   ) -> dict[str, Any]:
    """PTB-tokenize references and hypotheses (or not: tokenize="none"), then every metric.

    Returns {"Bleu_1".."Bleu_4", "ROUGE_L", "CIDEr"} in pycocoevalcap's units (fractions; CIDEr x10),
    plus "per_item" {"CIDEr": [...], "ROUGE_L": [...]} and "tokenizer".
    """
    missing = [k for k in refs if k not in hyps]
    if missing:
        raise KeyError(f"no hypothesis for {len(missing)} image(s), e.g. {missing[0]!r}")
    if not refs or any(len(v) == 0 for v in refs.values()):
        raise ValueError("every image needs at least one reference caption")
    if tokenize == "none":
        gts, res, used = {k: list(v) for k, v in refs.items()}, {k: hyps[k] for k in refs}, "none"
    else:
        gts = tokenize_captions(refs, tokenize)
        res = {k: v[0] for k, v in tokenize_captions({k: [hyps[k]] for k in refs}, tokenize).items()}
        used = tokenizer_name() if tokenize == "auto" else tokenize
    out: dict[str, Any] = {f"Bleu_{i + 1}": s for i, s in enumerate(bleu(gts, res))}
    out["ROUGE_L"], rouge_items = rouge_l(gts, res)
    out["CIDEr"], cider_items = cider_d(gts, res)
    out["per_item"] = {"CIDEr": cider_items, "ROUGE_L": rouge_items}
    out["tokenizer"] = used
    return out
