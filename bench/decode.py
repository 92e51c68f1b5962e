"""Decode speed: vlmkit's generation engine vs. transformers' `LlavaForConditionalGeneration.generate`.

Model: SigLIP-B/16-224 + 2-layer MLP + Qwen2-0.5B dimensions (hidden 896, 24 layers, 14 heads / 2 KV heads,
vocab 151,936; about 0.72B parameters), random weights, bf16, batch 1, one 224 px image (196 image tokens)
plus a short question, exactly 64 new tokens (greedy, end-of-sequence suppressed). Both run the same weights:
the transformers model is made from the vlmkit one with `vlmkit.interop.llava.to_hf_llava`.

Also measured: the latency of a follow-up turn in a `ChatSession` (image features and the KV cache of the
conversation so far reused) vs. recomputing the whole conversation (image re-encoded, full prefill);
latency = prefill + first token of the answer.

Run: `python bench/decode.py [--new-tokens 64] [--repeats 2]`. The last line is
`decode_speedup: X (target: 1.0)` (vlmkit decode tokens/s / transformers'); it exits 1 when that or the
follow-up target (>= 5x) is missed.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import torch
from PIL import Image
from transformers.generation.streamers import BaseStreamer

import vlmkit
from vlmkit.generation import ChatSession, Engine, GenerationConfig
from vlmkit.interop.llava import to_hf_llava

DECODE_TARGET = 1.0
FOLLOWUP_TARGET = 5.0
MODEL = {
    "vision": {"type": "siglip", "image_size": 224, "patch_size": 16, "hidden_size": 768, "num_layers": 12,
               "num_heads": 12, "intermediate_size": 3072, "feature_layer": -2, "image_mean": [0.5] * 3,
               "image_std": [0.5] * 3},
    "connector": {"type": "mlp", "num_layers": 2},
    "language": {"type": "qwen2", "hidden_size": 896, "num_layers": 24, "num_heads": 14, "num_kv_heads": 2,
                 "intermediate_size": 4864, "max_position_embeddings": 4096, "rope_theta": 1000000.0,
                 "tie_word_embeddings": True, "hf_config": {"vocab_size": 151936}},
    "template": "chatml",
    "dtype": "bfloat16",
    "max_length": 1024,
}
QUESTION = "<image>\nDescribe the picture in detail: which shapes do you see, where are they and what colors?"


class FirstTokenTimer(BaseStreamer):
    """Records when transformers' generate emits its first new token (the first put() is the prompt)."""

    def __init__(self) -> None:
        self.calls = 0
        self.first: float | None = None

    def put(self, value: torch.Tensor) -> None:
        self.calls += 1
        if self.calls == 2 and self.first is None:
            self.first = time.perf_counter()

    def end(self) -> None:
        pass


def time_vlmkit(engine: Engine, image: Image.Image, new: int) -> tuple[float, float]:
    """(time to first token, decode tokens/s over the remaining tokens)."""
    cfg = GenerationConfig(max_new_tokens=new, min_new_tokens=new)
    prefill = engine.prepare([([{"role": "user", "content": QUESTION}], [image])])
    t0 = time.perf_counter()
    steps = engine.steps(prefill, cfg)
    rows = next(steps)
    first = time.perf_counter()
    for step_rows in steps:
        rows = step_rows
    end = time.perf_counter()
    assert len(rows[0].ids) == new, len(rows[0].ids)
    return first - t0, (new - 1) / (end - first)


def time_transformers(llava, processor, image: Image.Image, new: int) -> tuple[float, float]:
    batch = processor(images=[image], messages=[{"role": "user", "content": QUESTION}])
    timer = FirstTokenTimer()
    t0 = time.perf_counter()
    with torch.no_grad():
        out = llava.generate(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                             pixel_values=batch["pixel_values"].to(llava.dtype), max_new_tokens=new,
                             min_new_tokens=new, do_sample=False, streamer=timer)
    end = time.perf_counter()
    assert out.shape[1] - batch["input_ids"].shape[1] == new
    return timer.first - t0, (new - 1) / (end - timer.first)


def followup(model, processor, image: Image.Image) -> tuple[float, float]:
    """(follow-up latency with reuse, latency recomputing the conversation), one new token each."""
    one = GenerationConfig(max_new_tokens=1)
    session = ChatSession(model, processor, config=GenerationConfig(max_new_tokens=8))
    session.ask("Describe the picture in detail.", image=image)
    t0 = time.perf_counter()
    session.ask("And which color is the largest shape?", config=one)
    reused = time.perf_counter() - t0
    messages = [{"role": m.role, "content": m.content} for m in session.history[:-1]]
    t0 = time.perf_counter()
    Engine(model, processor).generate([(messages, [image])], one)
    recomputed = time.perf_counter() - t0
    return reused, recomputed


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--new-tokens", type=int, default=64)
    p.add_argument("--repeats", type=int, default=2)
    args = p.parse_args()
    torch.manual_seed(0)
    t0 = time.perf_counter()
    model, processor = vlmkit.build(MODEL)
    model.eval()
    llava = to_hf_llava(model)
    n = sum(q.numel() for q in model.parameters())
    print(f"model: {n / 1e9:.2f}B parameters, bf16, {torch.get_num_threads()} threads "
          f"(built in {time.perf_counter() - t0:.0f}s)")
    image = Image.new("RGB", (224, 224), "white")
    engine = Engine(model, processor)
    time_vlmkit(engine, image, 4)  # warm-up both paths
    time_transformers(llava, processor, image, 4)
    ours, theirs = [], []
    for _ in range(args.repeats):
        ours.append(time_vlmkit(engine, image, args.new_tokens))
        theirs.append(time_transformers(llava, processor, image, args.new_tokens))
    o_ttft, o_tps = statistics.median(t for t, _ in ours), statistics.median(s for _, s in ours)
    h_ttft, h_tps = statistics.median(t for t, _ in theirs), statistics.median(s for _, s in theirs)
    print(f"transformers LLaVA generate: TTFT {h_ttft:.2f}s, decode {h_tps:.2f} tokens/s")
    print(f"vlmkit engine:               TTFT {o_ttft:.2f}s, decode {o_tps:.2f} tokens/s")
    reused, recomputed = followup(model, processor, image)
    fu = recomputed / reused
    print(f"follow-up turn latency: {reused:.2f}s with cached image + prefix, {recomputed:.2f}s recomputing "
          f"({fu:.1f}x, target >= {FOLLOWUP_TARGET}x)")
    speedup = o_tps / h_tps
    print(f"decode_speedup: {speedup:.2f} (target: {DECODE_TARGET})")
    return 0 if speedup >= DECODE_TARGET and fu >= FOLLOWUP_TARGET else 1


if __name__ == "__main__":
    sys.exit(main())
