"""Decoding settings and the next-token choice.

This module owns `GenerationConfig` (validated sampling settings shared by every front end) and `TokenChooser`,
which turns the last-position logits of a batch into next tokens. The logits pipeline is transformers' own
(`RepetitionPenaltyLogitsProcessor`, `TemperatureLogitsWarper`, `TopKLogitsWarper`, `TopPLogitsWarper`,
`SuppressTokensLogitsProcessor`); what is ours is one `torch.Generator` per request, so a seeded request samples
the same tokens alone or inside a batch.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import torch
from transformers.generation.logits_process import (
    LogitsProcessorList,
    RepetitionPenaltyLogitsProcessor,
    SuppressTokensLogitsProcessor,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)

from ..config import check_known_keys
from ..errors import ConfigError


@dataclass(frozen=True)
class GenerationConfig:
    """How to decode. Greedy by default; `do_sample=True` samples with temperature / top-k / top-p.

    Fields:
        max_new_tokens: most tokens generated per request (>= 1).
        do_sample: sample from the warped distribution instead of taking the argmax.
        temperature: > 0; divides the logits before sampling (ignored when greedy).
        top_p: in (0, 1]; nucleus sampling keeps the smallest set of tokens whose probability reaches top_p.
        top_k: >= 0; keep only the k most likely tokens (0 = off).
        repetition_penalty: > 0; 1.0 = off, > 1 discourages tokens already in the prompt or the answer.
        stop_strings: generation stops when the answer contains one of these (added to the template's).
        stop_token_ids: generation stops after one of these token ids (added to the tokenizer's eos).
        seed: >= 0 makes sampling reproducible (one generator per request); None draws from torch's RNG.
        max_length: optional cap on prompt + answer tokens (the seeds' `--max_length`); None = no cap.
        min_new_tokens: stop tokens and stop strings are ignored until this many tokens were generated.
    """

    max_new_tokens: int = 128
    do_sample: bool = False
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    repetition_penalty: float = 1.0
    stop_strings: tuple[str, ...] = ()
    stop_token_ids: tuple[int, ...] = ()
    seed: int | None = None
    max_length: int | None = None
    min_new_tokens: int = 0

    def __post_init__(self) -> None:
        object.__setattr__(self, "stop_strings", _as_tuple("stop_strings", self.stop_strings))
        object.__setattr__(self, "stop_token_ids", _as_tuple("stop_token_ids", self.stop_token_ids))
        _validate(self)

    def replace(self, **changes: Any) -> GenerationConfig:
        """A copy with `changes` applied (validated again)."""
        return replace(self, **changes)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> GenerationConfig:
        """Build from a mapping; unknown keys raise `ConfigError` listing the known ones."""
        check_known_keys(cls, d, "generation setting(s)")
        return cls(**d)


def _as_tuple(name: str, value: Any) -> tuple:
    if isinstance(value, (str, bytes, int)):
        value = (value,)
    try:
        return tuple(value)
    except TypeError:
        raise ConfigError(f"GenerationConfig.{name} must be a sequence, got {value!r}") from None


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _bad(name: str, value: Any, allowed: str) -> ConfigError:
    return ConfigError(f"GenerationConfig.{name}={value!r} is out of range; allowed: {allowed}")


def _validate(c: GenerationConfig) -> None:
    """Raise `ConfigError` naming the first field outside its allowed range."""
    if not _is_int(c.max_new_tokens) or c.max_new_tokens < 1:
        raise _bad("max_new_tokens", c.max_new_tokens, "an integer >= 1")
    if not isinstance(c.do_sample, bool):
        raise _bad("do_sample", c.do_sample, "True or False")
    if not _is_number(c.temperature) or c.temperature <= 0:
        raise _bad("temperature", c.temperature, "a number > 0 (use do_sample=False for greedy decoding)")
    if not _is_number(c.top_p) or not 0 < c.top_p <= 1:
        raise _bad("top_p", c.top_p, "a number in (0, 1]")
    if not _is_int(c.top_k) or c.top_k < 0:
        raise _bad("top_k", c.top_k, "an integer >= 0 (0 = off)")
    if not _is_number(c.repetition_penalty) or c.repetition_penalty <= 0:
        raise _bad("repetition_penalty", c.repetition_penalty, "a number > 0 (1.0 = off)")
    if not all(isinstance(s, str) and s for s in c.stop_strings):
        raise _bad("stop_strings", c.stop_strings, "non-empty strings")
    if not all(_is_int(t) and t >= 0 for t in c.stop_token_ids):
        raise _bad("stop_token_ids", c.stop_token_ids, "integers >= 0")
    if c.seed is not None and (not _is_int(c.seed) or c.seed < 0):
        raise _bad("seed", c.seed, "None or an integer >= 0")
    if c.max_length is not None and (not _is_int(c.max_length) or c.max_length < 1):
        raise _bad("max_length", c.max_length, "None or an integer >= 1")
    if not _is_int(c.min_new_tokens) or not 0 <= c.min_new_tokens <= c.max_new_tokens:
        raise _bad("min_new_tokens", c.min_new_tokens, "an integer from 0 to max_new_tokens")


def logits_processors(config: GenerationConfig, suppress_ids: Sequence[int] = ()) -> LogitsProcessorList:
    """transformers' processors (always applied) followed by the warpers (only when sampling)."""
    procs = LogitsProcessorList()
    if suppress_ids:
        procs.append(SuppressTokensLogitsProcessor(list(suppress_ids)))
    if config.repetition_penalty != 1.0:
        procs.append(RepetitionPenaltyLogitsProcessor(float(config.repetition_penalty)))
    if config.do_sample:
        if config.temperature != 1.0:
            procs.append(TemperatureLogitsWarper(float(config.temperature)))
        if config.top_k > 0:
            procs.append(TopKLogitsWarper(config.top_k))
        if config.top_p < 1.0:
            procs.append(TopPLogitsWarper(float(config.top_p)))
    return procs


class TokenChooser:
    """Picks the next token of each row: argmax when greedy, else a draw from the row's own generator."""

    def __init__(self, config: GenerationConfig, batch_size: int, suppress_ids: Sequence[int] = ()) -> None:
        self.config = config
        self.processors = logits_processors(config, suppress_ids)
        self.generators = [_generator(config.seed) for _ in range(batch_size)] if config.do_sample else []

    def __call__(self, history: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        """history [B, T] token ids so far (prompt + answer), logits [B, V] -> next token ids [B]."""
        scores = self.processors(history, logits.float())  # [B, V]
        if not self.config.do_sample:
            return scores.argmax(-1)  # [B]
        probs = torch.softmax(scores, dim=-1)  # [B, V]
        picks = [
            torch.multinomial(probs[i].cpu(), 1, generator=g)  # [1]
            for i, g in enumerate(self.generators)
        ]
        return torch.cat(picks).to(logits.device)  # [B]


def _generator(seed: int | None) -> torch.Generator:
    """A CPU generator seeded with `seed`, or from torch's global RNG (so `torch.manual_seed` still applies)."""
    if seed is None:
        seed = int(torch.randint(0, 2**62, (1,)).item())
    return torch.Generator().manual_seed(seed)
