"""Build the small byte-level BPE tokenizer shipped in `src/vlmkit/assets/tokenizer/`.

How it was made: this script generates its own corpus (no download) -- the text of vlmkit's synthetic tasks
(questions and answers about colored shapes: counting, colors, positions, grounding prompts with
`[[x0,y0,x1,y1]]` boxes over all 000-999 numbers, captions, captcha strings), every registered chat
template rendered on sample conversations, a list of basic English words, and Chinese 问/答 turns -- then
trains a byte-level BPE (HF `tokenizers`, vocab 2000 including the special tokens, digits always split
into single characters) and saves it as a Hugging Face tokenizer directory (`PreTrainedTokenizerFast`,
bos "<s>", eos "</s>", pad "<pad>", unk "<unk>"). No post-processor: the processor adds bos/eos itself
as each template says. The corpus is generated with a fixed seed, so the output is deterministic.

Regenerate (from the repository root):

    .venv/bin/python scripts/make_tokenizer.py            # writes src/vlmkit/assets/tokenizer/
    .venv/bin/python scripts/make_tokenizer.py --out DIR  # anywhere else
"""

from __future__ import annotations

import argparse
import random
import sys
from collections.abc import Iterator
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from vlmkit.templates import TEMPLATES, Message, get_template  # noqa: E402

DEFAULT_OUT = ROOT / "src" / "vlmkit" / "assets" / "tokenizer"
VOCAB_SIZE = 2000
SEED = 0
BOS, EOS, PAD, UNK = "<s>", "</s>", "<pad>", "<unk>"
SPECIAL_TOKENS = [
    UNK, BOS, EOS, PAD, "<image>",
    "<|im_start|>", "<|im_end|>", "<|begin_of_text|>", "<|eot_id|>", "<|start_header_id|>", "<|end_header_id|>",
    "<img>", "</img>", "<Img>", "</Img>",
]

COLORS = ["red", "green", "blue", "yellow", "orange", "purple", "pink", "brown", "black", "white", "gray", "cyan"]
SHAPES = ["circle", "square", "triangle", "rectangle", "star", "diamond", "ellipse", "hexagon", "cross", "heart"]
POSITIONS = ["left", "right", "above", "below", "top", "bottom", "center", "middle", "corner"]
NUMBER_WORDS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten"]
BASIC_WORDS = """
the a an of to in on at by for with from and or but not no yes is are was were be been being am do does did
have has had can could will would should may might must shall this that these those there here it its they
them their he she his her we our you your i me my what which who whom whose where when why how many much
more most less few some any all each every other another same different both either neither only just very
too also again still already always never often sometimes image picture photo photograph scene object objects
shape shapes color colors colour number count size big small large tiny little long short tall wide narrow
left right above below under over near far next beside between behind front inside outside around across
first second third last one two three four five six seven eight nine ten hundred thousand point points box
boxes bounding location position area region designated find show tell describe description caption answer
question please help helpful assistant user system human chat can see look give provide following content
text letters digits characters written write read word words sentence code captcha string there is are
background foreground canvas grid row column side edge line lines dot dots pattern plain simple solid bright
dark light empty full filled outlined thin thick rotated rotation upside down up down bottom top middle center
answer: question: short yes. no. true false correct wrong ok okay thanks thank hello hi sure sorry good bad
new old first last make made making go goes going went get gets got take takes took put puts set sets
people person man woman boy girl child dog cat bird car bus tree house sky water road table chair book
""".split()
CHINESE = ["问：", "答：", "图中有什么？", "图中的形状是什么颜色？", "图片", "描述这张图片。", "左边", "右边", "上面",
           "下面", "圆形", "正方形", "三角形", "红色", "绿色", "蓝色", "黄色", "有几个？", "一个", "两个", "三个"]


def _box(rng: random.Random) -> str:
    x0, x1 = sorted(rng.sample(range(1000), 2))
    y0, y1 = sorted(rng.sample(range(1000), 2))
    return f"{x0:03d},{y0:03d},{x1:03d},{y1:03d}"


def _boxes(rng: random.Random) -> str:
    return "[[" + ";".join(_box(rng) for _ in range(rng.choice([1, 1, 1, 2, 3]))) + "]]"


def _thing(rng: random.Random) -> str:
    return f"{rng.choice(COLORS)} {rng.choice(SHAPES)}"


def _captcha(rng: random.Random) -> str:
    chars = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"
    return "".join(rng.choice(chars) for _ in range(rng.randint(4, 6)))


def _qa(rng: random.Random) -> tuple[str, str]:
    """One synthetic question/answer pair about a picture of colored shapes."""
    kind = rng.randrange(7)
    shape, color, n = rng.choice(SHAPES), rng.choice(COLORS), rng.randint(0, 10)
    if kind == 0:
        return f"How many {shape}s are there in the image?", rng.choice([str(n), NUMBER_WORDS[n]])
    if kind == 1:
        return f"What color is the {shape}?", rng.choice([color, f"The {shape} is {color}."])
    if kind == 2:
        a, b = _thing(rng), _thing(rng)
        pos = rng.choice(["left of", "right of", "above", "below"])
        return f"Is the {a} {pos} the {b}?", rng.choice(["Yes", "No", "yes", "no"])
    if kind == 3:
        thing = _thing(rng)
        return (f"Can you point out the {thing} in the image and provide the bounding boxes of their location?",
                f"The {thing} {_boxes(rng)}" if rng.random() < 0.5 else _boxes(rng))
    if kind == 4:
        return (f"Tell me what you see within the designated area [[{_box(rng)}]] in the picture.",
                f"A {_thing(rng)}.")
    if kind == 5:
        code = _captcha(rng)
        return rng.choice(["What text is written in the image?", "CAPTCHA:", "Read the captcha."]), code
    things = ", ".join(_thing(rng) for _ in range(rng.randint(1, 3)))
    pos = rng.choice(POSITIONS)
    return "Describe the image.", f"A picture of a {things} on the {pos} of a {color} background."


def _template_lines(rng: random.Random) -> Iterator[str]:
    """Every template rendered on a few two-turn conversations, plus its fixed strings."""
    for name in TEMPLATES:
        t = get_template(name)
        yield from (s for s in (t.prefix, t.default_system, t.assistant_prompt, *t.stop_strings) if s)
        for _ in range(40):
            (q1, a1), (q2, a2) = _qa(rng), _qa(rng)
            msgs = [Message("user", q1, images=1), Message("assistant", a1), Message("user", q2),
                    Message("assistant", a2)]
            yield t.render(msgs).text
            yield t.render(msgs[:3], add_generation_prompt=True).text


def corpus(seed: int = SEED) -> Iterator[str]:
    """The whole training corpus, deterministic for a given seed."""
    rng = random.Random(seed)
    yield from _template_lines(rng)
    for _ in range(20000):
        q, a = _qa(rng)
        yield f"{q} {a}"
    for i in range(1000):
        yield f"{i:03d} {i} [[{i:03d},{(i * 7) % 1000:03d},{(i * 13) % 1000:03d},{(i * 31) % 1000:03d}]]"
    for _ in range(3):
        words = list(BASIC_WORDS)
        rng.shuffle(words)
        yield from (" ".join(words[i:i + 12]) for i in range(0, len(words), 12))
        yield from (w.capitalize() for w in words)
    for _ in range(50):
        yield "问：" + rng.choice(CHINESE) + "\n答：" + rng.choice(CHINESE)


def build_tokenizer(seed: int = SEED, vocab_size: int = VOCAB_SIZE) -> Tokenizer:
    """Train the byte-level BPE on the generated corpus."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False)]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, min_frequency=2, special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False,
    )
    tok.train_from_iterator(corpus(seed), trainer=trainer)
    return tok


def save(tok: Tokenizer, out: Path) -> None:
    """Wrap as a transformers fast tokenizer and write the directory."""
    from transformers import PreTrainedTokenizerFast

    hf = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token=BOS, eos_token=EOS, pad_token=PAD, unk_token=UNK,
        additional_special_tokens=[t for t in SPECIAL_TOKENS if t not in (BOS, EOS, PAD, UNK)],
        model_max_length=4096, clean_up_tokenization_spaces=False,
    )
    out.mkdir(parents=True, exist_ok=True)
    hf.save_pretrained(str(out))


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    ap.add_argument("--vocab-size", type=int, default=VOCAB_SIZE)
    args = ap.parse_args(argv)
    tok = build_tokenizer(vocab_size=args.vocab_size)
    save(tok, args.out)
    print(f"wrote {args.out} (vocab {tok.get_vocab_size()})")


if __name__ == "__main__":
    main()
