"""Does a shapes model fail to *see* objects, or to *find* the one a question names? Five measurements.

    python scripts/diagnose_binding.py [MODEL_DIR]      # default: the packaged default model

1. linear probe: an object's kind and colour read from the image token at its centre (connector output);
2. captions: exact match by number of shapes (the model lists objects left to right);
3. "What color is the <kind>?": exact match by number of shapes, and how many wrong answers name another
   object's colour;
4. attention of the answer position, per LM layer (mean over heads), on the asked object's image tokens vs the
   other object's, in two-object scenes;
5. phrase sensitivity: in two-object scenes, the grounding question asked about each object in turn; a model that
   binds gives two different boxes, a model that ignores the phrase gives the same box twice.
Scenes come from seeds the recipe never trains on. Takes about a minute on 2 CPU cores.
"""

from __future__ import annotations

import argparse
import random
from collections import defaultdict

import torch

import vlmkit
from vlmkit.constants import IMAGE_TOKEN
from vlmkit.data.synthetic import make_sample
from vlmkit.data.synthetic.shapes import COLORS, GROUNDING_PROMPT, SHAPES, Shape, draw_scene, make_scene
from vlmkit.eval.metrics.grounding import iou, parse_box
from vlmkit.generation import Engine, GenerationConfig, Request, default_model_dir

SIZE, GRID = 96, 6  # image size of the default model, image tokens per side


def token_of(box: tuple[int, int, int, int]) -> int:
    cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
    return int(cy // (SIZE / GRID)) * GRID + int(cx // (SIZE / GRID))


def token_mask(box: tuple[int, int, int, int]) -> torch.Tensor:
    step = SIZE // GRID
    m = torch.zeros(GRID, GRID)
    m[box[1] // step:(box[3] - 1) // step + 1, box[0] // step:(box[2] - 1) // step + 1] = 1
    return m.reshape(-1)  # [GRID*GRID]


def linear_probe(x: torch.Tensor, y: torch.Tensor, classes: int) -> float:
    """Held-out accuracy of a logistic regression (80/20 split, standardized features)."""
    cut = int(len(y) * 0.8)
    x = (x - x[:cut].mean(0)) / (x[:cut].std(0) + 1e-5)
    w = torch.zeros(x.shape[1], classes, requires_grad=True)
    b = torch.zeros(classes, requires_grad=True)
    opt = torch.optim.Adam([w, b], lr=1e-2)
    for _ in range(500):
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(x[:cut] @ w + b, y[:cut]) + 1e-4 * (w**2).sum()
        loss.backward()
        opt.step()
    return ((x[cut:] @ w + b).argmax(1) == y[cut:]).float().mean().item()


def probe(model, processor, scenes: list[list[Shape]]) -> None:
    feats, kinds, colors = [], [], []
    with torch.no_grad():
        for start in range(0, len(scenes), 100):
            chunk = scenes[start:start + 100]
            pixels = torch.stack([processor.image_transform(draw_scene(s, SIZE)) for s in chunk])
            tokens = model.encode_images(pixels)  # [B, 36, D]
            for row, shapes in zip(tokens, chunk):
                for s in shapes:
                    feats.append(row[token_of(s.box)].float())
                    kinds.append(SHAPES.index(s.kind))
                    colors.append(list(COLORS).index(s.color))
    x = torch.stack(feats)
    print(f"1. probe on the centre token ({len(x)} objects): kind {linear_probe(x, torch.tensor(kinds), 3):.1%}, "
          f"colour {linear_probe(x, torch.tensor(colors), len(COLORS)):.1%}")


def by_count(engine: Engine, samples: list, judge) -> dict[int, list[bool]]:
    results = engine.generate([Request(s.messages[:1], s.images) for s in samples],
                              GenerationConfig(max_new_tokens=48), batch_size=50)
    out: dict[int, list[bool]] = defaultdict(list)
    for s, r in zip(samples, results):
        out[len(s.meta["shapes"])].append(judge(s, r.text.strip()))
    return out


def show(title: str, table: dict[int, list[bool]]) -> None:
    cells = ", ".join(f"{n}: {sum(v) / len(v):.0%} of {len(v)}" for n, v in sorted(table.items()))
    print(f"{title}: {cells}")


def attention(model, processor, rng: random.Random, pairs: int = 150) -> None:
    lm = model.language_model
    lm.config._attn_implementation = "eager"  # attention weights are returned by the eager kernel only
    asked = other = None
    n = 0
    while n < pairs:
        shapes = make_scene(rng, SIZE, 2)
        if len(shapes) != 2 or shapes[0].kind == shapes[1].kind:
            continue
        mt, mo = token_mask(shapes[0].box), token_mask(shapes[1].box)
        if (mt * mo).sum() > 0:
            continue
        batch = processor(images=[draw_scene(shapes, SIZE)], text=f"{IMAGE_TOKEN}\nWhat color is the {shapes[0].kind}?")
        image_pos = (batch["input_ids"][0] == model.image_token_id).nonzero()[:, 0]
        with torch.no_grad():
            out = lm(inputs_embeds=model.embed(batch["input_ids"], batch["pixel_values"]),
                     attention_mask=batch["attention_mask"], output_attentions=True)
        last = torch.stack([a[0, :, -1, image_pos].mean(0) for a in out.attentions])  # [layers, 36]
        asked = (last * mt).sum(-1) if asked is None else asked + (last * mt).sum(-1)
        other = (last * mo).sum(-1) if other is None else other + (last * mo).sum(-1)
        n += 1
    cells = ", ".join(f"layer {i}: {a / n:.2f} vs {o / n:.2f}" for i, (a, o) in enumerate(zip(asked, other)))
    print(f"4. attention of the answer position, asked object vs the other ({n} scenes): {cells}")


def phrase_sensitivity(engine: Engine, rng: random.Random, scenes: int = 100) -> None:
    requests, asked = [], []
    while len(asked) < 2 * scenes:
        shapes = make_scene(rng, SIZE, 2)
        if len(shapes) != 2:
            continue
        image = draw_scene(shapes, SIZE)
        for s in shapes:
            question = f"{IMAGE_TOKEN}\n" + GROUNDING_PROMPT.format(f"the {s.name}")
            requests.append(Request([{"role": "user", "content": question}], [image]))
            asked.append(s)
    texts = [r.text for r in engine.generate(requests, GenerationConfig(max_new_tokens=24), batch_size=50)]
    same = sum(texts[2 * i] == texts[2 * i + 1] for i in range(scenes))
    boxes = [parse_box(t, SIZE, SIZE) for t in texts]
    right = sum(b is not None and iou(b, s.box) >= 0.5 for b, s in zip(boxes, asked))
    print(f"5. grounding both objects of {scenes} two-object scenes: the same answer for both {same} times; "
          f"Acc@0.5 {right / len(texts):.0%}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", nargs="?", default=str(default_model_dir()))
    args = parser.parse_args()
    model, processor = vlmkit.load(args.model)
    rng = random.Random(5)
    probe(model, processor, [make_scene(rng, SIZE, 5) for _ in range(1500)])
    engine = Engine(model, processor)
    captions = [make_sample("caption", i, seed=999, image_size=SIZE) for i in range(200)]
    show("2. captions, exact match by shapes in the scene", by_count(engine, captions, lambda s, a: a == s.answer()))
    colour = [s for s in (make_sample("shapes", i, seed=998, tasks="color") for i in range(300))
              if s.meta["task"] == "color"]
    table = by_count(engine, colour, lambda s, a: a == s.answer())
    show("3. 'What color is the <kind>?' by shapes in the scene", table)
    answers = engine.generate([Request(s.messages[:1], s.images) for s in colour], GenerationConfig(max_new_tokens=4))
    wrong = [(s, r.text.strip()) for s, r in zip(colour, answers) if r.text.strip() != s.answer()]
    present = sum(a in {o["color"] for o in s.meta["shapes"]} for s, a in wrong)
    print(f"   wrong answers naming a colour that is in the scene: {present} of {len(wrong)}")
    attention(model, processor, random.Random(3))
    phrase_sensitivity(engine, random.Random(4))


if __name__ == "__main__":
    main()
