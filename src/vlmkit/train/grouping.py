"""The order samples are trained in: the epoch's random permutation and its length-grouped variant.

Length grouping (`train.group_by_length`, as in transformers' `LengthGroupedSampler` and LLaVA's
`group_by_modality_length`): batches of samples of about the same length, so a batch of 90-token captchas is
not padded to the 250 tokens of the one grounding chat drawn with them.

The order stays a pure function of (seed, epoch), so a resumed run sees the same batches: the epoch's random
permutation is cut into mega-batches of `units_per_group` batches; each mega-batch is sorted by length (longest
first) and cut into batches again, and those batches are shuffled within their mega-batch. A "unit" is one
micro-batch on every rank together (`batch_size x world_size` consecutive stream positions; rank `r` takes every
`world_size`-th), so each rank's micro-batch is as uniform as its share of the unit.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ..data.sample import Sample
from ..processing.processor import VLMProcessor

UNITS_PER_GROUP = 50
"""Batches per mega-batch (transformers' default `mega_batch_mult` is at most 50)."""


def epoch_permutation(n: int, seed: int, epoch: int, shuffle: bool = True) -> np.ndarray:
    """The order of `n` samples in `epoch`: a permutation that depends only on (seed, epoch)."""
    if not shuffle:
        return np.arange(n)
    return np.random.default_rng([seed, epoch]).permutation(n)


def grouped_permutation(
    lengths: np.ndarray, seed: int, epoch: int, unit: int, units_per_group: int = UNITS_PER_GROUP
) -> np.ndarray:
    """A permutation of `range(len(lengths))` whose consecutive `unit`-sized slices hold samples of similar length."""
    if unit < 1 or units_per_group < 1:
        raise ValueError(f"unit={unit} and units_per_group={units_per_group} must be >= 1")
    perm = epoch_permutation(len(lengths), seed, epoch)
    rng = np.random.default_rng([seed, epoch, 1])
    span = unit * units_per_group
    out: list[np.ndarray] = []
    for start in range(0, len(perm), span):
        chunk = perm[start:start + span]
        chunk = chunk[np.argsort(-lengths[chunk], kind="stable")]  # longest first
        units = [chunk[i:i + unit] for i in range(0, len(chunk), unit)]
        out.extend(units[j] for j in rng.permutation(len(units)))
    return np.concatenate(out)


def estimate_lengths(samples: Sequence[Sample], processor: VLMProcessor, max_length: int | None = None) -> np.ndarray:
    """Token count of every sample, as cheaply as the data allows.

    Generated data (`SyntheticSet`, alone or in a `ChainedSamples` mixture) is made on access, so each generator's
    first sample is encoded and stands for all of its samples (a generator's samples differ in length by a few
    tokens). Samples held in memory (data files) are estimated without opening their images: image tokens plus
    one token per word of text, as LLaVA's `modality_lengths` does.
    """
    from ..data.synthetic import ChainedSamples, SyntheticSet

    limit = max_length or processor.max_length
    parts = samples.parts if isinstance(samples, ChainedSamples) else [samples]
    lengths = []
    for part in parts:
        if isinstance(part, SyntheticSet):
            first = part[0]
            n_tokens = len(processor.encode(first.messages, list(first.images), max_length=10**9).input_ids)
            lengths.append(np.full(len(part), n_tokens, dtype=np.int64))
        else:
            lengths.append(np.array([_word_estimate(s, processor.num_image_tokens) for s in part], dtype=np.int64))
    return np.minimum(np.concatenate(lengths) if lengths else np.zeros(0, np.int64), limit)


def _word_estimate(sample: Sample, image_tokens: int) -> int:
    words = sum(len(str(m.get("content", "")).split()) for m in sample.messages)
    return words + image_tokens * len(sample.images)
