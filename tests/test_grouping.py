"""Length-grouped sample order (`train.group_by_length`): uniform batches, a permutation per epoch, exact resume."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

import vlmkit
from vlmkit.data.sample import Sample
from vlmkit.data.synthetic import ChainedSamples, SyntheticSet
from vlmkit.train.config import RunConfig
from vlmkit.train.dataset import ResumableSampler
from vlmkit.train.distributed import DistInfo
from vlmkit.train.grouping import epoch_permutation, estimate_lengths, grouped_permutation
from vlmkit.train.loop import Trainer, load_data, train


def mixed_units(order: np.ndarray, lengths: np.ndarray, unit: int) -> int:
    """How many `unit`-sized slices of `order` hold samples of more than one length."""
    return sum(len(set(lengths[order[i:i + unit]])) > 1 for i in range(0, len(order), unit))


def test_grouped_permutation_makes_uniform_batches_and_stays_a_permutation() -> None:
    rng = np.random.default_rng(0)
    lengths = np.where(rng.random(1000) < 0.3, 250, 90)  # 30% long grounding chats, 70% short captchas
    unit, per_group = 8, 10
    order = grouped_permutation(lengths, seed=5, epoch=0, unit=unit, units_per_group=per_group)
    assert sorted(order.tolist()) == list(range(1000))
    assert (order == grouped_permutation(lengths, 5, 0, unit, per_group)).all()  # a function of (seed, epoch)
    assert not (order == grouped_permutation(lengths, 5, 1, unit, per_group)).all()
    groups = -(-1000 // (unit * per_group))
    assert mixed_units(order, lengths, unit) <= groups  # at most the one unit where a mega-batch's sort turns
    assert mixed_units(epoch_permutation(1000, 5, 0), lengths, unit) > 100  # a plain shuffle mixes most
    # mega-batches keep the data's order at their scale: unit order is shuffled, not sorted by length overall
    firsts = lengths[order[::unit]][:groups * per_group]
    assert 0 < (firsts == 250).mean() < 1 and len(set(firsts[:per_group])) == 2


def test_grouped_sampler_resumes_and_shards_like_one_process() -> None:
    lengths = np.array([10, 200, 10, 10, 200, 10, 200, 10, 10, 10, 200, 10])
    n, unit = len(lengths), 4
    whole = list(ResumableSampler(n, 3, length=3 * n, lengths=lengths, unit=unit))  # three epochs
    assert sorted(whole[:n]) == list(range(n))
    assert list(ResumableSampler(n, 3, start=8, length=3 * n - 8, lengths=lengths, unit=unit)) == whole[8:]
    ranks = [list(ResumableSampler(n, 3, rank=r, world_size=2, length=2 * n, lengths=lengths, unit=unit))
             for r in range(2)]
    assert [i for pair in zip(*ranks) for i in pair] == whole[:2 * n]
    with pytest.raises(ValueError, match="11 lengths for 12 samples"):
        ResumableSampler(n, 3, lengths=lengths[:-1], unit=unit)


def mixture_config(out: Path, group: bool) -> RunConfig:
    return RunConfig.from_dict({
        "model": "llava-tiny",
        "stage": "sft",
        "data": {"synthetic": [
            {"kind": "captcha", "n": 12, "seed": 1, "image_size": 32},
            {"kind": "shapes", "n": 12, "seed": 2, "image_size": 32, "tasks": "grounding", "turns": 3},
        ]},
        "train": {"lr": 1e-3, "batch_size": 4, "max_steps": 3, "warmup_steps": 1, "log_every": 1,
                  "group_by_length": group, "save_every": 1, "keep_last": 5},
        "output_dir": str(out),
    })


def test_estimate_lengths_encodes_one_sample_per_generator_and_counts_words_otherwise() -> None:
    _, processor = vlmkit.build("llava-tiny")
    captchas = SyntheticSet("captcha", 5, 1, image_size=32)
    chats = SyntheticSet("shapes", 3, 2, image_size=32, tasks="grounding", turns=3)
    lengths = estimate_lengths(ChainedSamples([captchas, chats]), processor)
    encoded = [len(processor.encode(s.messages, list(s.images)).input_ids) for s in (captchas[0], chats[0])]
    assert lengths.tolist() == [encoded[0]] * 5 + [encoded[1]] * 3 and encoded[1] > encoded[0]
    assert estimate_lengths(ChainedSamples([captchas, chats]), processor, max_length=40).max() == 40
    in_memory = [Sample("a", [{"role": "user", "content": "<image>\ntwo words"}], images=["x.png"]),
                 Sample("b", [{"role": "user", "content": "three more words"}])]
    assert estimate_lengths(in_memory, processor).tolist() == [processor.num_image_tokens + 3, 3]


def test_training_with_group_by_length_draws_one_generator_per_batch_and_resumes(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = mixture_config(tmp_path / "g", group=True)
    trainer = Trainer(cfg, DistInfo())
    trainer.setup(*load_data(cfg))
    order = list(trainer.make_sampler())  # 3 steps x 4 samples of the 24 (captchas 0-11, grounding chats 12-23)
    assert len(set(order)) == 12
    batches = [order[i:i + 4] for i in range(0, len(order), 4)]
    assert all(len({i >= 12 for i in b}) == 1 for b in batches), batches  # captchas or chats, never both
    full: list[float] = []
    train(cfg, callback=lambda step, record: full.append(record["loss"]))
    shutil.rmtree(tmp_path / "g" / "final")
    shutil.rmtree(tmp_path / "g" / "checkpoint-3")
    again: list[float] = []
    train(mixture_config(tmp_path / "g", group=True), resume=True,
          callback=lambda step, record: again.append(record["loss"]))
    assert again == full[2:]  # continued from checkpoint-2 on the same batch
    assert "group_by_length" not in capsys.readouterr().out
    shutil.rmtree(tmp_path / "g" / "final")
    shutil.rmtree(tmp_path / "g" / "checkpoint-3")
    train(mixture_config(tmp_path / "g", group=False), resume=True)  # another order from here: said, not silent
    assert "trained with train.group_by_length=True, this run has False" in capsys.readouterr().out
