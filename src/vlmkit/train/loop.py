"""The training loop: `train(run_cfg)` runs one `RunConfig` end to end and returns the final model directory.

Model (preset / config file / saved directory / inline mapping) and data (files or `data.synthetic`) come from
the config; PEFT adds adapters (`peft.apply_peft`), the stage freezes parts (`freeze.apply_stage`), AdamW runs
on `freeze.param_groups` with warmup + cosine/linear/constant. One optimizer step = `grad_accum` micro-batches
on every rank; the loss is normalized by the label tokens of the whole step (all micro-batches, all ranks), so
the step is the same whatever the split into micro-batches and processes. Checkpoints (see `train.state`)
resume exactly: model, optimizer, scheduler, RNG and data position.
"""

from __future__ import annotations

import contextlib
import math
import random
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from .. import api
from ..checkpoint import BASE_REF_NAME, load_into, load_weights, read_config, write_json
from ..config import VLMConfig, apply_overrides
from ..data.sample import Sample
from ..errors import ConfigError, VlmkitError
from ..models.vlm import VLMModel
from ..processing.processor import VLMBatch, VLMProcessor
from ..templates import get_template
from . import state as st
from .config import OptimConfig, RunConfig
from .dataset import ResumableSampler, SampleDataset, count_label_tokens, make_loader
from .distributed import (
    DistInfo,
    all_reduce_sum,
    barrier,
    gather_objects,
    init_from_env,
    shutdown,
    wrap_model,
)
from .grouping import estimate_lengths
from .metrics import PLOT_FILE, MetricsLog, Progress, Throughput, plot_losses

StepCallback = Callable[[int, dict[str, Any]], None]
"""Called after every optimizer step (and its eval / save) with the step and its record; raise to stop."""

BEST_METRICS = ("valid_loss", "valid_accuracy")
SCHEDULES = {"cosine": "cosine", "linear": "linear", "constant": "constant_with_warmup"}
VALID_SEED_OFFSET = 1_000_003


# ---------------------------------------------------------------------------------------------- setup
def check_config(cfg: RunConfig) -> None:
    """Everything that can be checked before any work: metric names and the model spec."""
    if cfg.train.best_metric not in BEST_METRICS:
        raise ConfigError(f"train.best_metric='{cfg.train.best_metric}'; allowed: {', '.join(BEST_METRICS)}")
    if cfg.train.best_metric == "valid_accuracy" and not cfg.data.eval_generate:
        raise ConfigError("train.best_metric=valid_accuracy needs data.eval_generate: true")
    directory = model_dir(cfg.model)
    overrides = list(cfg.model_overrides)
    if directory is not None:
        try:
            VLMConfig.from_dict(apply_overrides(read_config(directory), overrides))
        except ConfigError as e:
            raise ConfigError(f"model {directory} with model_overrides {overrides}: {e}") from None
    else:
        api.resolve_config(cfg.model, overrides)
    if cfg.template is not None:
        get_template(cfg.template)


def seed_all(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def model_dir(spec: Any) -> Path | None:
    """The saved model directory `model:` names: a directory, or `default` (the packaged default model)."""
    if spec == "default":
        from ..generation.engine import default_model_dir

        return default_model_dir()
    return Path(spec) if isinstance(spec, str) and Path(spec).is_dir() else None


def build_model(cfg: RunConfig) -> tuple[VLMModel, VLMProcessor]:
    """The model of `cfg.model`: a saved directory is loaded, anything else built (seeded: reproducible)."""
    seed_all(cfg.train.seed)
    directory = model_dir(cfg.model)
    overrides = list(cfg.model_overrides) or None
    if directory is not None:
        model, processor = api.load(directory, overrides=overrides)
    else:
        model, processor = api.build(cfg.model, overrides)
    if cfg.template is not None:
        processor.template = get_template(cfg.template)
        model.config.template = cfg.template
    return model.train(), processor


def load_data(cfg: RunConfig) -> tuple[Sequence[Sample], list[Sample]]:
    """(train, valid) samples from data files or `data.synthetic`; valid is [] without a validation split.

    Synthetic training samples are made on access (`SyntheticSet`); validation samples are made up front.
    """
    d = cfg.data
    if d.synthetic is not None:
        from ..data.synthetic import ChainedSamples

        entries = d.synthetic if isinstance(d.synthetic, list) else [d.synthetic]
        parts = [synthetic_split(entry, i) for i, entry in enumerate(entries)]
        return ChainedSamples([t for t, _ in parts]), [s for _, v in parts for s in v]
    from ..data.formats import load_samples

    train, _ = load_samples(d.train, d.image_root, d.format, d.skip_bad)
    valid = load_samples(d.valid, d.image_root, d.format, d.skip_bad)[0] if d.valid else []
    return train, valid


def synthetic_split(entry: dict[str, Any], index: int = 0) -> tuple[Sequence[Sample], list[Sample]]:
    """(train, valid) samples of one `data.synthetic` entry; valid uses a disjoint seed."""
    from ..data.synthetic import SYNTHETIC, SyntheticSet, generate

    opts = dict(entry)
    kind = opts.pop("kind", None)
    if kind is None:
        raise ConfigError(f"data.synthetic[{index}]: needs 'kind' (one of: {', '.join(SYNTHETIC.names())})")
    n, seed, valid_n = int(opts.pop("n", 1000)), int(opts.pop("seed", 0)), int(opts.pop("valid_n", 0))
    valid_overrides = dict(opts.pop("valid_options", None) or {})  # e.g. single-turn validation
    valid_opts = {**opts, **valid_overrides}
    try:
        train = SyntheticSet(kind, n, seed, **opts)
    except ConfigError as e:
        raise ConfigError(f"data.synthetic[{index}]: {e}") from None
    valid = generate(kind, valid_n, seed + VALID_SEED_OFFSET, **valid_opts) if valid_n > 0 else []
    return train, valid


def total_steps(optim: OptimConfig, num_samples: int, world_size: int) -> int:
    if optim.max_steps is not None:
        return max(1, optim.max_steps)
    global_batch = optim.batch_size * optim.grad_accum * world_size
    return max(1, math.ceil(optim.epochs * num_samples / global_batch))


def make_optimizer(model: nn.Module, optim: OptimConfig) -> torch.optim.Optimizer:
    from .freeze import param_groups

    groups = [g for g in param_groups(model, optim) if g["params"]]
    if not groups:
        raise VlmkitError("nothing to train: every parameter is frozen (check stage, freeze and peft)")
    return torch.optim.AdamW(groups, lr=optim.lr, betas=tuple(optim.betas), weight_decay=optim.weight_decay)


def make_scheduler(optimizer: torch.optim.Optimizer, optim: OptimConfig, steps: int) -> Any:
    from transformers import get_scheduler

    warmup = optim.warmup_steps if optim.warmup_steps is not None else math.ceil(optim.warmup_ratio * steps)
    return get_scheduler(SCHEDULES[optim.schedule], optimizer, num_warmup_steps=warmup,
                         num_training_steps=steps)


def enable_gradient_checkpointing(model: nn.Module) -> int:
    """Turn on (non-reentrant) gradient checkpointing in every transformers model inside; returns how many."""
    from transformers import PreTrainedModel

    n = 0
    for m in model.modules():
        if isinstance(m, PreTrainedModel) and m.supports_gradient_checkpointing:
            kwargs = {"use_reentrant": False}
            if hasattr(m, "activation_checkpointing_enable"):  # transformers >= 5.x name
                m.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
            else:
                m.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
            n += 1
    return n


# ------------------------------------------------------------------------------------------------ step
def accumulate_gradients(
    model: nn.Module,
    micro_batches: Sequence[VLMBatch],
    info: DistInfo | None = None,
    autocast: contextlib.AbstractContextManager | None = None,
) -> tuple[float, int]:
    """Forward + backward every micro-batch; returns (loss of the whole step, its label tokens).

    The label tokens of all micro-batches on all ranks are counted first and passed as `num_items_in_batch`,
    so the summed gradients equal those of one batch holding every sample. DDP averages gradients over ranks,
    hence the factor `world_size`; it syncs only on the last micro-batch.
    """
    info = info or DistInfo()
    local = sum(count_label_tokens(b) for b in micro_batches)
    tokens = int(all_reduce_sum(local, info))
    denom = max(tokens, 1)
    loss_sum = 0.0
    for i, batch in enumerate(micro_batches):
        last = i == len(micro_batches) - 1
        sync = contextlib.nullcontext() if last or not hasattr(model, "no_sync") else model.no_sync()
        with sync:
            with autocast or contextlib.nullcontext():
                out = model(**batch, labels=batch["labels"], num_items_in_batch=denom, use_cache=False,
                            logits_to_keep="labels")
            (out.loss * info.world_size).backward()
        loss_sum += float(out.loss.detach())
    return float(all_reduce_sum(loss_sum, info)), tokens


# ---------------------------------------------------------------------------------------------- trainer
class Trainer:
    """One run: built model, data, optimizer and the loop state (step, data position, best checkpoint)."""

    def __init__(self, cfg: RunConfig, info: DistInfo, callback: StepCallback | None = None) -> None:
        self.cfg, self.info, self.callback = cfg, info, callback
        self.opt = cfg.train
        self.run_dir = Path(cfg.output_dir)
        self.peft = cfg.peft.method != "none"
        self.step = self.position = 0
        self.best: dict[str, Any] | None = None
        self.last_eval: dict[str, Any] | None = None
        self.last_save_step = -1
        self.log = MetricsLog(self.run_dir, enabled=info.is_main)
        self.autocast = torch.autocast(info.device.type, dtype=torch.bfloat16, enabled=self.opt.bf16)

    # ------------------------------------------------------------------------------------------ build
    def setup(self, train_samples: list[Sample], valid_samples: list[Sample]) -> None:
        from .freeze import apply_stage, trainable_table

        cfg = self.cfg
        model, self.processor = build_model(cfg)
        if self.peft:  # adapters first: the stage then decides which adapters and components train
            from .peft import apply_peft

            self.base_ref = self.base_reference(model)  # before the adapters wrap (and QLoRA quantizes) it
            model = apply_peft(model, cfg.peft, cfg.lora) or model
        apply_stage(model, cfg.stage, cfg.freeze)
        if self.opt.gradient_checkpointing:
            enable_gradient_checkpointing(model)
        self.model = model.to(self.info.device)
        self.say(trainable_table(self.model))
        self.train_set = SampleDataset(train_samples, self.processor, cfg.data.max_length)
        self.valid_set = SampleDataset(valid_samples, self.processor, cfg.data.max_length)
        self.global_batch = self.opt.batch_size * self.opt.grad_accum * self.info.world_size
        self.total = total_steps(self.opt, len(train_samples), self.info.world_size)
        self.optimizer = make_optimizer(self.model, self.opt)
        self.scheduler = make_scheduler(self.optimizer, self.opt, self.total)
        self.trainable = [p for p in self.model.parameters() if p.requires_grad]
        self.ddp_model = wrap_model(self.model, self.info)
        seed_all(self.opt.seed + self.info.rank)

    def resume_from(self, ckpt: Path) -> None:
        ts = st.read_trainer_state(ckpt)
        if ts["global_batch"] != self.global_batch:
            raise VlmkitError(f"{ckpt} was written with {ts['global_batch']} samples per step; this run has "
                              f"{self.global_batch} (batch_size x grad_accum x processes): resume with the "
                              "same")
        if self.peft:
            st.load_trainable(ckpt, self.model)
        else:
            load_into(self.model, load_weights(ckpt), ckpt)
        st.load_optimizer_state(ckpt, self.optimizer, self.scheduler)
        self.step, self.position = int(ts["step"]), int(ts["position"])
        if ts.get("total_steps") != self.total:
            self.say(f"warning: {ckpt} belongs to a run of {ts.get('total_steps')} steps, this one has "
                     f"{self.total}: the learning-rate schedule changes length (not an exact resume)")
        grouped = bool(ts.get("group_by_length", False))  # checkpoints from before the option: ungrouped
        if grouped != self.opt.group_by_length:
            self.say(f"warning: {ckpt} was trained with train.group_by_length={grouped}, "
                     f"this run has {self.opt.group_by_length}: the rest of this epoch is a different order, so "
                     "some of its samples repeat and others are skipped (not an exact resume)")
        self.best, self.last_eval = ts.get("best"), ts.get("last_eval")
        self.last_save_step = self.step
        self.log.truncate_after(self.step)
        rng = ts["rng"]
        st.restore_rng(rng[self.info.rank] if self.info.rank < len(rng) else rng[0])
        self.say(f"resumed from {ckpt} at step {self.step}")

    # ------------------------------------------------------------------------------------------- loop
    def make_sampler(self) -> ResumableSampler:
        """This rank's sample indices from the current position to the last step."""
        lengths = None
        if self.opt.group_by_length:
            lengths = estimate_lengths(self.train_set.samples, self.processor, self.cfg.data.max_length)
        return ResumableSampler(len(self.train_set), self.opt.seed, True, self.info.rank, self.info.world_size,
                                start=self.position, length=(self.total - self.step) * self.global_batch,
                                lengths=lengths, unit=self.opt.batch_size * self.info.world_size)

    def run(self) -> Path:
        sampler = self.make_sampler()
        batches = iter(make_loader(self.train_set, sampler, self.opt.batch_size, self.opt.num_workers))
        self.say(f"training {self.total} steps of {self.global_batch} samples ({len(self.train_set)} train, "
                 f"{len(self.valid_set)} valid) into {self.run_dir}")
        progress = Progress(self.total, self.step, enabled=self.info.is_main)
        speed, window = Throughput(), []
        try:
            while self.step < self.total:
                micro = [next(batches).to(self.info.device) for _ in range(self.opt.grad_accum)]
                record = self.optimizer_step(micro)
                speed.add(self.global_batch)
                window.append(record["loss"])
                rate = None
                if self.step % self.opt.log_every == 0 or self.step == self.total:
                    rate = speed.rate()
                    self.log.append({**record, "loss": sum(window) / len(window), "samples_per_s": rate})
                    window = []
                progress.update(record["loss"], record["lr"], rate)
                record.update(self.after_step())
                if self.callback is not None:
                    self.callback(self.step, record)
        finally:
            progress.close()
        return self.finish()

    def optimizer_step(self, micro_batches: list[VLMBatch]) -> dict[str, Any]:
        """Accumulate, clip, step optimizer and scheduler; returns the step's record (loss, lr, grad norm)."""
        loss, tokens = accumulate_gradients(self.ddp_model, micro_batches, self.info, self.autocast)
        norm = None
        if self.opt.max_grad_norm > 0:
            norm = float(torch.nn.utils.clip_grad_norm_(self.trainable, self.opt.max_grad_norm))
        lr = self.optimizer.param_groups[0]["lr"]
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        self.position += self.global_batch
        return {"step": self.step, "epoch": round(self.position / len(self.train_set), 4), "loss": loss,
                "lr": lr, "grad_norm": norm, "tokens": tokens}

    def after_step(self) -> dict[str, Any]:
        """Evaluate and save when due; returns the evaluation metrics of this step (if any)."""
        o, out = self.opt, {}
        save = bool(o.save_every) and self.step % o.save_every == 0
        if len(self.valid_set) and ((o.eval_every and self.step % o.eval_every == 0) or save):
            out = self.evaluate()
        if save:
            self.save_checkpoint()
        return out

    def finish(self) -> Path:
        if len(self.valid_set) and (self.last_eval or {}).get("step") != self.step:
            self.evaluate()
        if self.last_save_step != self.step:
            self.save_checkpoint()
        final = self.run_dir / "final"
        if self.info.is_main:
            api.save(self.model, self.processor, final)  # PEFT: base weights + adapters/<name>/
            plot_losses(self.log.records(), self.run_dir / PLOT_FILE, title=self.run_dir.name)
            self.say(f"final model: {final}")
        barrier(self.info)
        return final

    # ------------------------------------------------------------------------------------- eval / save
    def evaluate(self) -> dict[str, Any]:
        from .validation import generation_accuracy, validation_loss

        rec: dict[str, Any] = {"step": self.step}
        rec["valid_loss"] = validation_loss(self.model, self.valid_set, self.opt.batch_size, self.info,
                                            self.autocast)
        if self.cfg.data.eval_generate:
            with self.autocast:
                rec.update(generation_accuracy(self.model, self.processor, self.valid_set.samples, self.info,
                                               self.opt.batch_size, self.cfg.data.eval_max_samples))
        self.log.append(rec)
        self.last_eval = rec
        shown = ", ".join(f"{k} {v:.4f}" for k, v in rec.items()
                          if k.startswith("valid_") and isinstance(v, float))
        self.say(f"step {self.step}: {shown}")
        return rec

    def base_reference(self, model: VLMModel) -> dict[str, Any]:
        """Where an adapter checkpoint's base model is: the saved directory `model:` names (absolute), or for a
        built model its weights, saved into `<run>/base/` at the start (a relative path: the run can move)."""
        directory = model_dir(self.cfg.model)
        if directory is not None:
            return {"path": str(directory.resolve()), "overrides": list(self.cfg.model_overrides)}
        base = self.run_dir / "base"
        # a run with checkpoints is being resumed (a fresh start refuses it): its base/ is already there
        if self.info.is_main and st.latest_checkpoint(self.run_dir) is None:
            api.save(model, self.processor, base)
        return {"path": "../base", "overrides": []}

    def write_checkpoint_model(self, directory: Path) -> None:
        """A checkpoint's model files: a loadable model directory, or for PEFT runs the adapter, the processor
        and `base_model.json` naming the base (`vlmkit.load` and every `--model` option take either)."""
        if self.peft:
            from .peft import save_adapter

            save_adapter(self.model, directory, self.cfg.lora.name)
            self.processor.save_pretrained(directory)
            write_json(directory / BASE_REF_NAME, self.base_ref)
        else:
            api.save(self.model, self.processor, directory)

    def save_checkpoint(self) -> None:
        rng = gather_objects(st.capture_rng(), self.info)
        self._update_best()
        if self.info.is_main:
            state = {"position": self.position, "epoch": self.position / len(self.train_set),
                     "total_steps": self.total, "global_batch": self.global_batch,
                     "group_by_length": self.opt.group_by_length,
                     "world_size": self.info.world_size, "best": self.best, "last_eval": self.last_eval}
            trainable = st.trainable_state(self.model) if self.peft else None
            st.write_checkpoint(self.run_dir, self.step, self.write_checkpoint_model, self.optimizer,
                                self.scheduler, state, rng, trainable)
            best_step = None if self.best is None else self.best["step"]
            if best_step == self.step:
                st.link_best(self.run_dir, self.step)
            st.prune_checkpoints(self.run_dir, self.opt.keep_last, best_step)
        self.last_save_step = self.step
        barrier(self.info)

    def _update_best(self) -> None:
        metric = self.opt.best_metric
        ev = self.last_eval
        if ev is None or ev.get("step") != self.step or not isinstance(ev.get(metric), float):
            return
        value = ev[metric]
        if math.isnan(value):
            return
        lower = metric.endswith("loss")
        if self.best is None or (value < self.best["value"] if lower else value > self.best["value"]):
            self.best = {"metric": metric, "value": value, "step": self.step}

    def say(self, text: str) -> None:
        if self.info.is_main:
            tqdm.write(text)


# ------------------------------------------------------------------------------------------------ entry
def train(
    run_cfg: RunConfig, *, resume: bool = False, overwrite: bool = False, callback: StepCallback | None = None
) -> Path:
    """Run training as configured; returns the final model directory (`<output_dir>/final`).

    `resume=True` continues from the newest complete checkpoint in `output_dir` (a fresh start when there is
    none) and gives the same losses as an uninterrupted run. Under `torchrun` every process calls this.
    """
    run_cfg.validate()
    check_config(run_cfg)
    train_samples, valid_samples = load_data(run_cfg)
    owned = not torch.distributed.is_initialized()
    info = init_from_env()
    ok = False
    try:
        run_dir = Path(run_cfg.output_dir)
        st.prepare_run_dir(run_dir, resume, overwrite, info)
        if info.is_main:
            run_dir.mkdir(parents=True, exist_ok=True)
            st.remove_stale_temps(run_dir)
            run_cfg.save(run_dir / "config.yaml")
        barrier(info)
        trainer = Trainer(run_cfg, info, callback)
        trainer.setup(train_samples, valid_samples)
        ckpt = st.latest_checkpoint(run_dir) if resume else None
        if ckpt is not None:
            trainer.resume_from(ckpt)
        elif resume:
            trainer.say(f"no checkpoint in {run_dir}: starting from scratch")
            trainer.log.truncate_after(0)
        final = trainer.run()
        ok = True
        return final
    finally:
        if owned:
            shutdown(info, clean=ok)
