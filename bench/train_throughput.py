"""Training throughput: vlmkit's training loop vs. a straightforward PyTorch loop over transformers' LLaVA.

Setup ("llava-tiny-like", the LLaVA-1.5 recipe's shape at toy size): CLIP ViT 96 px / 8 px patches (144 patch
tokens, penultimate layer, CLS dropped, frozen) -> 2-layer GELU MLP -> LLaMA (hidden 384, 4 layers), stage
`sft` (connector + LLM train), batches of 16 synthetic shapes questions with one image each.

Baseline: `LlavaForConditionalGeneration` holding the same initial weights (converted with
`vlmkit.interop.llava.to_hf_llava`), fed the same pre-collated batches, trained with
`loss = model(**batch, labels=labels).loss; loss.backward(); opt.step()` in fp32 with AdamW.
vlmkit: `vlmkit.train.loop.train` on the same data (its loop also encodes every batch from the raw samples),
once in fp32 and once with its recommended bf16 autocast (when the CPU supports bf16).

Run: `python bench/train_throughput.py [--steps 12] [--batch-size 16]`. Prints samples/s of each and, last,
`train_throughput_ratio: X (target: 1.5)` = best vlmkit configuration / baseline; exits 1 below target.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

import vlmkit
from vlmkit.data.synthetic import generate
from vlmkit.interop.llava import to_hf_llava
from vlmkit.train.config import RunConfig
from vlmkit.train.loop import train

TARGET = 1.5
MODEL = {
    "vision": {"type": "clip", "image_size": 96, "patch_size": 8, "hidden_size": 192, "num_layers": 4,
               "num_heads": 4, "intermediate_size": 768, "feature_layer": -2, "drop_cls": True},
    "connector": {"type": "mlp", "num_layers": 2},
    "language": {"type": "llama", "hidden_size": 384, "num_layers": 4, "num_heads": 6, "num_kv_heads": 6,
                 "intermediate_size": 1024, "max_position_embeddings": 512},
    "template": "vicuna",
    "max_length": 256,
}


def run_vlmkit(steps: int, batch: int, bf16: bool, out: Path) -> float:
    cfg = RunConfig.from_dict({
        "model": MODEL, "stage": "sft",
        "data": {"synthetic": {"kind": "shapes", "n": steps * batch, "seed": 0, "image_size": 96}},
        "train": {"lr": 1e-4, "batch_size": batch, "max_steps": steps, "warmup_steps": 0, "bf16": bf16,
                  "log_every": 1, "seed": 0, "keep_last": 1},
        "output_dir": str(out),
    })
    stamps: list[float] = []
    train(cfg, overwrite=True, callback=lambda step, record: stamps.append(time.perf_counter()))
    return measured_rate(stamps, batch)


def run_baseline(steps: int, batch: int) -> float:
    torch.manual_seed(0)
    model, processor = vlmkit.build(MODEL)
    llava = to_hf_llava(model).train()
    llava.model.vision_tower.requires_grad_(False)
    del model
    samples = generate("shapes", steps * batch, 0, image_size=96)
    batches = []
    for i in range(steps):
        chunk = samples[i * batch:(i + 1) * batch]
        batches.append(processor.collate([processor.encode(s.messages, s.images) for s in chunk]))
    opt = torch.optim.AdamW([p for p in llava.parameters() if p.requires_grad], lr=1e-4)
    stamps = []
    for b in batches:
        loss = llava(input_ids=b["input_ids"], attention_mask=b["attention_mask"],
                     pixel_values=b["pixel_values"], labels=b["labels"]).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(llava.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        stamps.append(time.perf_counter())
    return measured_rate(stamps, batch)


def measured_rate(stamps: list[float], batch: int) -> float:
    """Samples/s over the steps after the first two (warm-up excluded)."""
    skip = 2 if len(stamps) > 4 else 1
    span = stamps[-1] - stamps[skip - 1]
    return (len(stamps) - skip) * batch / span


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--steps", type=int, default=12)
    p.add_argument("--batch-size", type=int, default=16)
    args = p.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {args.steps} steps x {args.batch_size}")
    with tempfile.TemporaryDirectory() as tmp:
        base = run_baseline(args.steps, args.batch_size)
        print(f"baseline (transformers LLaVA, plain loop, fp32): {base:.1f} samples/s")
        fp32 = run_vlmkit(args.steps, args.batch_size, False, Path(tmp) / "fp32")
        print(f"vlmkit train (fp32):                            {fp32:.1f} samples/s ({fp32 / base:.2f}x)")
        best = fp32
        try:
            bf16 = run_vlmkit(args.steps, args.batch_size, True, Path(tmp) / "bf16")
            print(f"vlmkit train (bf16 autocast):                   {bf16:.1f} samples/s ({bf16 / base:.2f}x)")
            best = max(best, bf16)
        except RuntimeError as e:  # CPUs without bf16 support
            print(f"vlmkit train (bf16 autocast): not supported here ({e})")
    ratio = best / base
    print(f"train_throughput_ratio: {ratio:.2f} (target: {TARGET})")
    return 0 if ratio >= TARGET else 1


if __name__ == "__main__":
    sys.exit(main())
