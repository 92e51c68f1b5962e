"""Training data: a map-style dataset that encodes `Sample`s on access, and a resumable, sharded sampler.

The sampler sees the data as one endless stream: epoch 0's permutation, then epoch 1's, ... where each
permutation depends only on (seed, epoch). A position in that stream (samples consumed by all ranks together)
is all it takes to resume exactly. Rank `r` of `w` takes the stream positions `p` with `p % w == r`, so one
optimizer step of `w` ranks with batch `B` covers the same contiguous stretch of the stream as one process
with batch `w * B`.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from ..constants import IGNORE_INDEX
from ..data.sample import Sample
from ..processing.processor import Encoded, VLMBatch, VLMProcessor, _as_message
from ..templates import Message, Template
from .grouping import epoch_permutation, grouped_permutation


def to_messages(sample: Sample) -> list[Message]:
    """The sample's OpenAI-style message dicts as template `Message`s."""
    return [_as_message(m) for m in sample.messages]


def prompt_messages(sample: Sample) -> list[Message]:
    """The conversation up to (without) its last assistant answer: the prompt for generation."""
    messages = to_messages(sample)
    last = max((i for i, m in enumerate(messages) if m.role == "assistant"), default=len(messages))
    return messages[:last]


class SampleDataset(Dataset):
    """`Sample`s -> `Encoded` (token ids, labels, pixels); images are opened only when a sample is read."""

    def __init__(
        self,
        samples: Sequence[Sample],
        processor: VLMProcessor,
        max_length: int | None = None,
        template: Template | None = None,
    ) -> None:
        self.samples = samples if isinstance(samples, Sequence) else list(samples)
        self.processor = processor
        self.max_length = max_length
        self.template = template

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> Encoded:
        s = self.samples[index]
        return self.processor.encode(to_messages(s), list(s.images), self.template,
                                     add_generation_prompt=False, max_length=self.max_length)


class ResumableSampler(Sampler[int]):
    """Indices of this rank's share of the sample stream from global position `start` for `length` positions.

    `length` counts global positions (all ranks together) and must be a multiple of `world_size`; every rank
    yields `length // world_size` indices. `state_dict()` / `load_state_dict()` carry the position. With
    `lengths` (one per sample), each epoch's order is `grouped_permutation(lengths, ..., unit)`: `unit`
    consecutive positions (one micro-batch of every rank) hold samples of similar length.
    """

    def __init__(
        self,
        num_samples: int,
        seed: int = 0,
        shuffle: bool = True,
        rank: int = 0,
        world_size: int = 1,
        start: int = 0,
        length: int | None = None,
        lengths: np.ndarray | None = None,
        unit: int = 1,
    ) -> None:
        if num_samples < 1:
            raise ValueError("ResumableSampler needs at least one sample")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is not in [0, {world_size})")
        self.num_samples = num_samples
        self.seed = seed
        self.shuffle = shuffle
        self.rank = rank
        self.world_size = world_size
        self.start = start
        self.length = num_samples if length is None else length
        if self.length % world_size:
            raise ValueError(f"length {self.length} is not a multiple of world_size {world_size}")
        if lengths is not None and len(lengths) != num_samples:
            raise ValueError(f"{len(lengths)} lengths for {num_samples} samples")
        self.lengths, self.unit = lengths, unit
        self._cache: tuple[int, np.ndarray] | None = None

    def permutation(self, epoch: int) -> np.ndarray:
        """The sample order of `epoch` (all ranks together)."""
        if self.lengths is not None and self.shuffle:
            return grouped_permutation(self.lengths, self.seed, epoch, self.unit)
        return epoch_permutation(self.num_samples, self.seed, epoch, self.shuffle)

    def index_at(self, position: int) -> int:
        """The sample index at a global stream position."""
        epoch, offset = divmod(position, self.num_samples)
        if self._cache is None or self._cache[0] != epoch:
            self._cache = (epoch, self.permutation(epoch))
        return int(self._cache[1][offset])

    def epoch_at(self, position: int) -> float:
        """Fractional epoch of a global stream position."""
        return position / self.num_samples

    def __iter__(self) -> Iterator[int]:
        for pos in range(self.start + self.rank, self.start + self.length, self.world_size):
            yield self.index_at(pos)

    def __len__(self) -> int:
        return self.length // self.world_size

    def state_dict(self) -> dict[str, Any]:
        return {"position": self.start, "seed": self.seed, "num_samples": self.num_samples,
                "shuffle": self.shuffle}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if int(state["num_samples"]) != self.num_samples:
            raise ValueError(f"the checkpoint's data had {state['num_samples']} samples, this run has "
                             f"{self.num_samples}: resume with the same training data")
        self.start = int(state["position"])
        self.seed = int(state["seed"])
        self.shuffle = bool(state["shuffle"])
        self._cache = None


def make_loader(
    dataset: SampleDataset, sampler: Sampler[int], batch_size: int, num_workers: int = 0
) -> DataLoader:
    """Batches of `VLMBatch` (right-padded); the loader has its own generator, so global RNG is untouched."""
    return DataLoader(dataset, batch_size=batch_size, sampler=sampler, num_workers=num_workers,
                      collate_fn=dataset.processor.collate, generator=torch.Generator().manual_seed(0),
                      persistent_workers=False)


def count_label_tokens(batch: VLMBatch) -> int:
    """Tokens the loss is taken over: labels after the one-position shift that are not IGNORE_INDEX."""
    labels = batch["labels"]
    return int((labels[:, 1:] != IGNORE_INDEX).sum())


def shard(items: Sequence[Any], rank: int, world_size: int) -> list[Any]:
    """Every `world_size`-th item starting at `rank` (evaluation sharding)."""
    return list(items[rank::world_size])
