"""Training: stages lower the loss, accumulation normalization, exact resume, checkpoints, metrics, config
overrides, the resumable sampler and DDP (2 processes of batch B == 1 process of batch 2B).

Tiny presets and a few steps only."""

from __future__ import annotations

import argparse
import copy
import importlib.util
import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

import vlmkit
from conftest import make_image
from vlmkit.api import PRESETS_DIR
from vlmkit.cli import merge_lora as merge_cli
from vlmkit.cli import train as cli_train
from vlmkit.data.sample import Sample
from vlmkit.errors import CheckpointError, ConfigError, VlmkitError
from vlmkit.train import state as st
from vlmkit.train.config import RunConfig
from vlmkit.train.dataset import ResumableSampler, SampleDataset, epoch_permutation
from vlmkit.train.loop import accumulate_gradients, build_model, check_config, train
from vlmkit.train.metrics import read_metrics

ROOT = Path(__file__).resolve().parents[1]
HAS_PEFT = importlib.util.find_spec("vlmkit.train.peft") is not None


def merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for k, v in extra.items():
        out[k] = merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def run_dict(out: Path, **extra: Any) -> dict[str, Any]:
    base = {
        "model": "llava-tiny",
        "stage": "sft",
        "data": {"synthetic": {"kind": "shapes", "n": 16, "seed": 0, "image_size": 32}},
        "train": {"lr": 3e-3, "batch_size": 4, "max_steps": 4, "warmup_steps": 1, "log_every": 1, "seed": 0},
        "output_dir": str(out),
    }
    return merge(base, extra)


def make_cfg(out: Path, **extra: Any) -> RunConfig:
    return RunConfig.from_dict(run_dict(out, **extra))


def train_losses(run_dir: Path) -> list[float]:
    return [r["loss"] for r in read_metrics(run_dir / "metrics.jsonl") if "loss" in r]


def collect(into: list[float], stop_at: int | None = None):
    def callback(step: int, record: dict[str, Any]) -> None:
        into.append(record["loss"])
        if step == stop_at:
            raise KeyboardInterrupt("simulated kill")

    return callback


# ------------------------------------------------------------------------------------------- stages
@pytest.mark.parametrize("stage", ["align", "sft", "full"])
def test_tiny_run_per_stage_lowers_loss_and_freezes(tmp_path: Path, stage: str) -> None:
    cfg = make_cfg(tmp_path / stage, stage=stage, data={"synthetic": {"n": 8}},
                   train={"lr": 1e-2 if stage == "align" else 3e-3, "max_steps": 6, "schedule": "constant"})
    losses: list[float] = []
    final = train(cfg, callback=collect(losses))
    assert sum(losses[-2:]) < sum(losses[:2]), losses
    trained, _ = vlmkit.load(final)
    start, _ = build_model(cfg)  # the same seeded initial weights
    before, after = start.state_dict(), trained.state_dict()
    changed = {name.split(".")[0] for name in before if not torch.equal(before[name], after[name])}
    expected = {"align": {"connector"}, "sft": {"connector", "language_model"},
                "full": {"vision_tower", "connector", "language_model"}}[stage]
    assert changed == expected


# ------------------------------------------------------------------------------------- accumulation
def _samples() -> list[Sample]:
    answers = ["red", "two blue circles and one green square", "3",
               "the square is left of the circle, at the top"]
    return [Sample(f"s{i}", [{"role": "user", "content": "<image>\nDescribe."},
                             {"role": "assistant", "content": a}], [make_image(i, 32)])
            for i, a in enumerate(answers)]


def test_accumulation_normalizes_by_all_label_tokens() -> None:
    torch.manual_seed(0)
    model, processor = vlmkit.build("llava-tiny")
    twin = copy.deepcopy(model)
    ds = SampleDataset(_samples(), processor)
    micro = [processor.collate([ds[0], ds[1]]), processor.collate([ds[2], ds[3]])]
    whole = [processor.collate([ds[i] for i in range(4)])]
    loss_micro, n_micro = accumulate_gradients(model, micro)
    loss_whole, n_whole = accumulate_gradients(twin, whole)
    assert n_micro == n_whole > 0
    torch.testing.assert_close(loss_micro, loss_whole, rtol=1e-5, atol=1e-6)
    for (name, p), q in zip(model.named_parameters(), twin.parameters()):
        if p.requires_grad:
            torch.testing.assert_close(p.grad, q.grad, rtol=1e-4, atol=1e-6, msg=name)
    # the naive mean of per-micro-batch means is a different number: the test above is not vacuous
    with torch.no_grad():
        naive = sum(float(twin(**b, labels=b["labels"]).loss) for b in micro) / 2
    assert abs(naive - loss_whole) > 1e-3


def test_grad_accum_run_equals_big_batch_run(tmp_path: Path) -> None:
    a = train(make_cfg(tmp_path / "a", train={"batch_size": 2, "grad_accum": 2, "max_steps": 3})).parent
    b = train(make_cfg(tmp_path / "b", train={"batch_size": 4, "grad_accum": 1, "max_steps": 3})).parent
    torch.testing.assert_close(train_losses(a), train_losses(b), rtol=1e-5, atol=1e-5)


# ------------------------------------------------------------------------------------------- resume
def _dropout_model() -> dict[str, Any]:
    """llava-tiny with attention dropout, so the resumed run must restore the RNG to match."""
    spec = yaml.safe_load((PRESETS_DIR / "llava-tiny.yaml").read_text())
    spec["language"]["hf_config"] = {"attention_dropout": 0.2}
    return spec


def test_exact_resume_matches_uninterrupted_run(tmp_path: Path) -> None:
    extra = {"model": _dropout_model(), "train": {"max_steps": 6, "save_every": 3, "keep_last": 5}}
    full: list[float] = []
    final_a = train(make_cfg(tmp_path / "a", **extra), callback=collect(full))
    cut: list[float] = []
    with pytest.raises(KeyboardInterrupt):
        train(make_cfg(tmp_path / "b", **extra), callback=collect(cut, stop_at=4))
    assert st.latest_checkpoint(tmp_path / "b").name == "checkpoint-3"
    with pytest.raises(VlmkitError, match="previous run"):
        train(make_cfg(tmp_path / "b", **extra))
    resumed: list[float] = []
    final_b = train(make_cfg(tmp_path / "b", **extra), resume=True, callback=collect(resumed))
    assert cut[:3] == full[:3] and resumed == full[3:]  # bit-identical, step by step
    assert train_losses(tmp_path / "b") == full  # metrics.jsonl: steps 4.. of the killed run were replaced
    wa, wb = vlmkit.load(final_a)[0].state_dict(), vlmkit.load(final_b)[0].state_dict()
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def test_resume_without_checkpoint_starts_fresh(tmp_path: Path) -> None:
    losses: list[float] = []
    train(make_cfg(tmp_path / "r", train={"max_steps": 2}), resume=True, callback=collect(losses))
    assert len(losses) == 2 and len(train_losses(tmp_path / "r")) == 2


# -------------------------------------------------------------------------------------- checkpoints
def test_checkpoints_keep_last_best_and_loadable(tmp_path: Path) -> None:
    run = tmp_path / "ck"
    cfg = make_cfg(run, data={"synthetic": {"valid_n": 4}},
                   train={"max_steps": 5, "save_every": 1, "keep_last": 2, "lr": 3e-2})
    train(cfg)
    evals = {r["step"]: r["valid_loss"] for r in read_metrics(run / "metrics.jsonl") if "valid_loss" in r}
    assert sorted(evals) == [1, 2, 3, 4, 5]  # every checkpoint is evaluated
    best = min(evals, key=evals.get)
    steps = sorted(s for s, _ in st.list_checkpoints(run))
    assert steps == sorted({4, 5, best})
    assert (run / "checkpoint-best").resolve() == (run / f"checkpoint-{best}").resolve()
    assert not [p for p in run.iterdir() if p.name.startswith(".")]  # no temporary leftovers
    ts = json.loads((run / "checkpoint-5" / "training_state" / "trainer_state.json").read_text())
    assert ts["step"] == 5 and ts["position"] == 5 * 4 and ts["best"]["step"] == best
    model, _ = vlmkit.load(run / "checkpoint-best")
    assert isinstance(model, vlmkit.VLMModel)
    assert not list(run.rglob("*.pt")) and not list(run.rglob("*.bin"))  # no pickle anywhere


def test_checkpoint_write_is_atomic(tmp_path: Path) -> None:
    model = torch.nn.Linear(2, 2)
    opt = torch.optim.AdamW(model.parameters())
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    rng = [st.capture_rng()]
    st.write_checkpoint(tmp_path, 7, lambda d: (d / "weights").write_text("old"), opt, sched, {}, rng)

    def broken(directory: Path) -> None:
        (directory / "weights").write_text("new")
        raise OSError("disk full")

    with pytest.raises(OSError):
        st.write_checkpoint(tmp_path, 7, broken, opt, sched, {}, [st.capture_rng()])
    with pytest.raises(OSError):
        st.write_checkpoint(tmp_path, 8, broken, opt, sched, {}, [st.capture_rng()])
    assert (tmp_path / "checkpoint-7" / "weights").read_text() == "old"
    assert not (tmp_path / "checkpoint-8").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint-7"]
    (tmp_path / "checkpoint-9").mkdir()  # incomplete (no training state): never resumed from
    assert st.latest_checkpoint(tmp_path).name == "checkpoint-7"


def test_optimizer_state_round_trips_without_pickle(tmp_path: Path) -> None:
    model = torch.nn.Linear(3, 2)
    opt = torch.optim.AdamW(model.parameters(), lr=0.1)
    model(torch.ones(1, 3)).sum().backward()
    opt.step()
    st.save_tree(tmp_path, "optimizer", opt.state_dict())
    back = st.load_tree(tmp_path, "optimizer")
    ref = opt.state_dict()
    assert back["param_groups"] == json.loads(json.dumps(ref["param_groups"]))
    for i, s in ref["state"].items():
        for k, v in s.items():
            assert torch.equal(back["state"][i][k], v)


# ---------------------------------------------------------------------------------- metrics and plot
def test_metrics_plot_and_config_written(tmp_path: Path) -> None:
    run = tmp_path / "m"
    cfg = make_cfg(run, data={"synthetic": {"valid_n": 4}, "eval_generate": True, "eval_max_samples": 3},
                   train={"max_steps": 4, "log_every": 2, "eval_every": 2})
    assert train(cfg) == run / "final"
    records = read_metrics(run / "metrics.jsonl")
    assert [r["step"] for r in records if "loss" in r] == [2, 4]
    assert all({"lr", "grad_norm", "samples_per_s", "epoch"} <= set(r) for r in records if "loss" in r)
    evals = [r for r in records if "valid_loss" in r]
    assert [r["step"] for r in evals] == [2, 4]
    assert all(0.0 <= r["valid_accuracy"] <= 1.0 and r["valid_generated"] == 3 for r in evals)
    assert (run / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert RunConfig.from_file(run / "config.yaml").to_dict() == cfg.to_dict()
    vlmkit.load(run / "final")


# ------------------------------------------------------------------------------------ config / CLI
def test_set_overrides_and_unknown_keys(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(run_dict(tmp_path / "out")))
    cfg = RunConfig.from_file(path, ["train.lr=0.5", "data.synthetic.n=7", "stage=align", "train.bf16=true"])
    assert (cfg.train.lr, cfg.data.synthetic["n"], cfg.stage, cfg.train.bf16) == (0.5, 7, "align", True)
    assert RunConfig.from_file(path, ["train.lr=2e-4"]).train.lr == 2e-4  # the issue's own example (YAML 1.1: a str)
    with pytest.raises(ConfigError, match="train.lr: expected float"):
        RunConfig.from_file(path, ["train.lr=fast"])
    with pytest.raises(ConfigError, match="bogus"):
        RunConfig.from_file(path, ["train.bogus=1"])
    assert cli_train.main([str(path), "--set", "train.bogus=1"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "bogus" in err and "\n" not in err
    bad_model = run_dict(tmp_path / "out", model={"vision": {"bogus": 1}})
    with pytest.raises(ConfigError, match="bogus"):
        train(RunConfig.from_dict(bad_model))
    with pytest.raises(ConfigError, match="colour"):
        train(make_cfg(tmp_path / "out", data={"synthetic": {"colour": 1}}))
    with pytest.raises(ConfigError, match="best_metric"):
        train(make_cfg(tmp_path / "out", train={"best_metric": "bleu"}))
    assert not (tmp_path / "out").exists()  # nothing ran


@pytest.mark.parametrize("name", ["shapes_llava_tiny", "captcha_lora", "align_caption"])
def test_example_configs_are_valid(name: str) -> None:
    cfg = RunConfig.from_file(ROOT / "configs" / f"{name}.yaml")
    check_config(cfg)


# ------------------------------------------------------------------------------------------ sampler
def test_sampler_is_resumable_and_shards_like_one_process() -> None:
    n, seed = 10, 3
    assert (epoch_permutation(n, seed, 1) == epoch_permutation(n, seed, 1)).all()
    assert not (epoch_permutation(n, seed, 0) == epoch_permutation(n, seed, 1)).all()
    whole = list(ResumableSampler(n, seed, length=26))  # crosses two epoch boundaries
    assert sorted(whole[:10]) == list(range(10)) and sorted(whole[10:20]) == list(range(10))
    assert list(ResumableSampler(n, seed, start=7, length=19)) == whole[7:]
    ranks = [list(ResumableSampler(n, seed, rank=r, world_size=2, start=4, length=22)) for r in range(2)]
    assert [i for pair in zip(*ranks) for i in pair] == whole[4:]
    s = ResumableSampler(n, seed, start=12)
    t = ResumableSampler(n, seed)
    t.load_state_dict(s.state_dict())
    assert list(t) == list(s)


# ----------------------------------------------------------------------------------------------- PEFT
@pytest.mark.skipif(not HAS_PEFT, reason="vlmkit.train.peft is not available yet")
def test_lora_run_lowers_loss_and_resumes_exactly(tmp_path: Path) -> None:
    extra = {"peft": {"method": "lora"}, "lora": {"rank": 4, "dropout": 0.1},
             "train": {"max_steps": 4, "save_every": 2, "lr": 1e-2}}
    full: list[float] = []
    final = train(make_cfg(tmp_path / "a", **extra), callback=collect(full))
    assert full[-1] < full[0]
    assert (tmp_path / "a" / "checkpoint-4" / "adapters" / "default").is_dir()  # checkpoints hold the adapter
    model, processor = vlmkit.load(final)  # final/ is a whole model directory with the adapter applied on load
    assert any("lora" in name for name, _ in model.named_parameters())
    # an adapter checkpoint loads too (its base saved once in <run>/base/), with final/'s outputs at that step
    ckpt_model, _ = vlmkit.load(tmp_path / "a" / "checkpoint-4")
    batch = processor(images=[make_image(0, 64)], messages=[{"role": "user", "content": "<image>\nWhat is it?"}])
    with torch.no_grad():
        torch.testing.assert_close(ckpt_model(**batch).logits, model(**batch).logits)
    merged = tmp_path / "merged"
    assert merge_cli.run(argparse.Namespace(model_dir=str(tmp_path / "a" / "checkpoint-2"), adapter=None,
                                            out=str(merged))) == 0
    assert (merged / "config.json").is_file() and not (merged / "adapters").exists()
    shutil.rmtree(tmp_path / "a" / "base")
    with pytest.raises(CheckpointError, match="holds only an adapter; its base model"):
        vlmkit.load(tmp_path / "a" / "checkpoint-4")
    with pytest.raises(KeyboardInterrupt):
        train(make_cfg(tmp_path / "b", **extra), callback=collect([], stop_at=3))
    resumed: list[float] = []
    train(make_cfg(tmp_path / "b", **extra), resume=True, callback=collect(resumed))
    assert resumed == full[2:]


# ------------------------------------------------------------------------------------------------ DDP
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed is not available")
def test_ddp_two_processes_match_one_process_with_double_batch(tmp_path: Path) -> None:
    """torchrun, 2 ranks (gloo) x batch 2 == 1 process x batch 4: the same loss at every step."""
    extra = {"data": {"synthetic": {"n": 12}}, "train": {"max_steps": 3, "warmup_steps": 0}}
    path = tmp_path / "ddp.yaml"
    path.write_text(yaml.safe_dump(run_dict(tmp_path / "ddp", **merge(extra, {"train": {"batch_size": 2}}))))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
           "--master_addr", "127.0.0.1", "--master_port", str(_free_port()),
           "-m", "vlmkit.cli.train", str(path)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    single = train(make_cfg(tmp_path / "one", **merge(extra, {"train": {"batch_size": 4}}))).parent
    ddp_losses, one_losses = train_losses(tmp_path / "ddp"), train_losses(single)
    assert len(ddp_losses) == 3
    torch.testing.assert_close(ddp_losses, one_losses, rtol=1e-5, atol=1e-5)
    ts = json.loads((tmp_path / "ddp" / "checkpoint-3" / "training_state" / "trainer_state.json").read_text())
    assert ts["world_size"] == 2 and len(ts["rng"]) == 2 and ts["global_batch"] == 4


def test_cli_skip_bad_flag(tmp_path):
    """`vlmkit train --skip-bad` drops invalid samples instead of refusing to start."""
    import json

    from PIL import Image

    from vlmkit.cli.main import main

    Image.new("RGB", (32, 32), "red").save(tmp_path / "ok.png")
    good = {"id": "good", "image": "ok.png", "conversations": [
        {"from": "human", "value": "<image>\nColor?"}, {"from": "gpt", "value": "red"}]}
    bad = {"id": "bad", "image": "missing.png", "conversations": [
        {"from": "human", "value": "<image>\nColor?"}, {"from": "gpt", "value": "red"}]}
    (tmp_path / "d.json").write_text(json.dumps([good, bad]))
    cfg = tmp_path / "run.yaml"
    cfg.write_text(f"model: llava-tiny\ndata: {{train: {tmp_path / 'd.json'}}}\n"
                   f"train: {{max_steps: 1, batch_size: 1}}\noutput_dir: {tmp_path / 'run'}\n")
    assert main(["train", str(cfg)]) == 2
    assert main(["train", str(cfg), "--skip-bad"]) == 0


def test_generation_accuracy_reports_each_task() -> None:
    from vlmkit.data.synthetic import generate
    from vlmkit.generation.engine import Engine, Request
    from vlmkit.generation.sampling import GenerationConfig
    from vlmkit.train.dataset import prompt_messages
    from vlmkit.train.distributed import init_from_env
    from vlmkit.train.validation import generation_accuracy

    torch.manual_seed(0)
    model, processor = vlmkit.build("llava-tiny")
    model.eval()
    samples = generate("captcha", 2) + generate("caption", 3)
    first = samples[0]  # make the model "right" on one captcha: its own greedy answer becomes the reference
    said = Engine(model, processor).generate([Request(prompt_messages(first), list(first.images))],
                                             GenerationConfig(max_new_tokens=64))[0].text  # the budget cap
    first.messages[-1]["content"] = said
    rec = generation_accuracy(model, processor, samples, init_from_env())
    assert rec["valid_generated"] == 5
    assert rec["valid_accuracy/captcha"] == pytest.approx(0.5)
    assert rec["valid_accuracy/caption"] == 0.0
    assert rec["valid_accuracy"] == pytest.approx(0.2)


def test_validation_scores_grounding_by_iou() -> None:
    from vlmkit.data.synthetic import generate
    from vlmkit.train.validation import answer_is_right

    ground = generate("shapes", 1, 3, tasks="grounding")[0]
    x0, y0, x1, y1 = ground.meta["bbox"]
    w, h = ground.meta["image_size"]
    assert answer_is_right(ground.answer(), ground)
    shifted = [round((x0 + 2) / w * 1000), round(y0 / h * 1000), round((x1 + 2) / w * 1000), round(y1 / h * 1000)]
    assert answer_is_right("[[{:03d},{:03d},{:03d},{:03d}]]".format(*shifted), ground)  # IoU >= 0.5, not exact
    assert not answer_is_right("[[000,000,010,010]]", ground) and not answer_is_right("somewhere", ground)
    count = generate("shapes", 1, 3, tasks="count")[0]
    assert answer_is_right(f"  {count.answer()} ", count) and not answer_is_right(count.answer() + "0", count)


def test_synthetic_split_lazy_train_and_valid_options() -> None:
    from vlmkit.data.synthetic import SyntheticSet
    from vlmkit.train.loop import synthetic_split

    train_set, valid = synthetic_split({"kind": "shapes", "n": 100_000, "turns": 3, "valid_n": 2,
                                        "valid_options": {"turns": 1}})
    assert isinstance(train_set, SyntheticSet) and len(train_set) == 100_000
    assert len(train_set[5].messages) == 6 and [len(s.messages) for s in valid] == [2, 2]
    with pytest.raises(ConfigError, match=r"data.synthetic\[0\].*unknown option"):
        synthetic_split({"kind": "shapes", "n": 3, "colour": "red"})


def test_default_model_recipe_configs_are_valid() -> None:
    stage1 = RunConfig.from_file(ROOT / "configs" / "default" / "stage1_read.yaml")
    check_config(stage1)
    stage2 = RunConfig.from_file(ROOT / "configs" / "default" / "train.yaml")
    assert stage2.model == stage1.output_dir + "/final"  # stage 2 continues from stage 1
    stage3 = RunConfig.from_file(ROOT / "configs" / "default" / "stage3.yaml")
    assert stage3.model == stage2.output_dir + "/final" and stage3.data.synthetic == stage2.data.synthetic
    assert {e["kind"] for e in stage2.data.synthetic} == {"shapes", "captcha", "caption"}
    stage4 = RunConfig.from_file(ROOT / "configs" / "default" / "stage4.yaml")
    assert stage4.model == "runs/default_stage4_init"  # scripts/fresh_language_model.py on stage 3's final/
    assert stage4.freeze.vision is False and stage4.freeze.connector is False  # only the fresh LM trains
    assert stage4.data.synthetic == stage2.data.synthetic
    stage5 = RunConfig.from_file(ROOT / "configs" / "default" / "stage5.yaml")
    assert stage5.model == stage4.output_dir + "/final" and stage5.output_dir == "runs/default_stage5"
    assert stage5.freeze.vision is False and stage5.freeze.connector is False  # the tower stays frozen
    assert stage5.train.lr < stage4.train.lr
    later = [RunConfig.from_file(ROOT / "configs" / "default" / f"stage{i}.yaml") for i in range(6, 16)]
    for i, (before, stage) in enumerate(zip([stage5, *later], later), start=6):  # each continues the one before
        assert stage.model == before.output_dir + "/final" and stage.output_dir == f"runs/default_stage{i}"
    stage6, stage7, stage8, stage9, stage10, stage11, stage12, stage13, stage14, stage15 = later
    assert stage6.model_overrides == ["image_positions=shared"]  # image tokens stop telling the LM where they are
    assert stage6.freeze.vision is False and stage6.freeze.connector is False
    assert stage7.freeze.vision is False and stage7.freeze.connector is False
    grounding = [e for e in stage7.data.synthetic if e.get("tasks") == "grounding"]
    assert grounding and grounding[0]["min_shapes"] == 2  # every grounding question picks one of several objects
    assert stage10.model_overrides == ["vision.image_size=128"]  # 64 image tokens from here on
    assert {e["kind"] for e in stage10.data.synthetic} == {"captcha"}
    # the whole model trains from stage 8 on, the tower and connector slower than the LM
    for stage in (stage8, stage9, stage10, stage11, stage12, stage13, stage14, stage15):
        assert stage.freeze.vision and stage.freeze.connector and stage.freeze.language
        assert stage.train.vision_lr < stage.train.lr and stage.train.connector_lr < stage.train.lr
    from vlmkit.train.loop import synthetic_split
    model, _ = vlmkit.build(str(ROOT / "configs" / "default" / "model.yaml"))
    assert sum(p.numel() for p in model.parameters()) < 7_500_000  # ships as <= 30 MB of fp32 safetensors
    assert model.num_image_tokens == 36
    assert all(s.train.group_by_length for s in (stage13, stage14, stage15)) and not stage12.train.group_by_length
    # the 160 px branch (not shipped): 100 image tokens, with the sincos2d positions of the 32x32 grid of 128 px
    branch = RunConfig.from_file(ROOT / "configs" / "default" / "branch_160px.yaml")
    assert branch.model == stage12.output_dir + "/final" and branch.output_dir == "runs/default_branch_160px"
    assert branch.model_overrides == ["vision.image_size=160", "vision.position_grid=32", "max_length=320"]
    model_128, processor_128 = vlmkit.build(str(ROOT / "configs" / "default" / "model.yaml"),
                                            stage10.model_overrides)
    assert model_128.vision_tower.grid_size == (32, 32)
    processor_160 = vlmkit.build(str(ROOT / "configs" / "default" / "model.yaml"), branch.model_overrides)[1]
    processors = {"stage11": processor_128, "stage12": processor_128, "stage13": processor_128,
                  "stage14": processor_128, "stage15": processor_128, "branch_160px": processor_160}
    assert processor_128.num_image_tokens == 64 and processor_160.num_image_tokens == 100
    assert processor_160.max_length == 320
    named = [(f"stage{i}", stage) for i, stage in enumerate(later[1:], start=7)] + [("branch_160px", branch)]
    for name, stage in named:
        for entry in stage.data.synthetic:
            sample = synthetic_split({**entry, "n": 2, "valid_n": 1})[0][0]  # every option is one its generator knows
            if name in processors:  # stages 11 on, at their resolution and max_length: nothing is truncated
                processor = processors[name]
                n_tokens = len(processor.encode(sample.messages, sample.images, max_length=10_000).input_ids)
                assert n_tokens <= processor.max_length, (f"{name}.yaml", entry, n_tokens)


def test_model_overrides_continue_a_checkpoint_in_a_changed_shape(tmp_path: Path) -> None:
    """A saved CNN-tower model continues at a higher resolution with shared image positions: every weight is
    reused, the processor follows (image size, token count) and the run directory's model says so."""
    torch.manual_seed(0)
    cnn = {"vision": {"type": "resnet", "image_size": 32, "patch_size": 4, "hidden_size": 16, "num_layers": 1},
           "connector": {"type": "pixel_shuffle", "factor": 2},
           "language": {"type": "llama", "hidden_size": 32, "num_layers": 1, "num_heads": 2,
                        "intermediate_size": 64},
           "template": "cogvlm-chat", "max_length": 256}
    base, processor = vlmkit.build(cnn)
    vlmkit.save(base, processor, tmp_path / "base")
    overrides = ["vision.image_size=64", "image_positions=shared"]
    model, processor = vlmkit.load(tmp_path / "base", overrides=overrides)
    assert model.num_image_tokens == 4 * base.num_image_tokens == processor.num_image_tokens
    assert processor(images=[make_image()], text="<image>\nHi")["pixel_values"].shape[-1] == 64
    for (name, p), q in zip(model.state_dict().items(), base.state_dict().values()):
        assert torch.equal(p, q), name
    with pytest.raises(VlmkitError, match="connector"):
        vlmkit.load(tmp_path / "base", overrides=["connector.factor=4"])  # the MLP's input no longer fits
    # a size override reaches the saved, complete HF config (which wins when the LM is built)
    longer, _ = vlmkit.load(tmp_path / "base", overrides=["language.max_position_embeddings=1024"])
    assert longer.language_model.config.max_position_embeddings == 1024
    with pytest.raises(VlmkitError, match="language_model"):
        vlmkit.load(tmp_path / "base", overrides=["language.num_layers=2"])  # the new layer has no weights

    run = train(make_cfg(tmp_path / "run", model=str(tmp_path / "base"), model_overrides=overrides,
                         data={"synthetic": {"kind": "shapes", "n": 8, "seed": 0, "image_size": 64}},
                         train={"max_steps": 2}))
    trained, _ = vlmkit.load(run)
    assert trained.config.vision.image_size == 64 and trained.config.image_positions == "shared"
    with pytest.raises(ConfigError, match="model_overrides.*image_positions='diagonal'"):
        check_config(make_cfg(tmp_path / "bad", model=str(tmp_path / "base"),
                              model_overrides=["image_positions=diagonal"]))
