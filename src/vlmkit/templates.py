"""Chat templates as data: how a conversation with images becomes one prompt string.

This module owns the `TEMPLATES` registry, the `Template` record (pure format strings, saved with every
checkpoint via `to_dict`/`from_dict`), rendering of `Message` lists into text plus the character spans of
the assistant answers (the only positions that carry a training loss), and cleaning of generated text.
Tokenization and image-token expansion belong to the processor; here an image is one `IMAGE_TOKEN` marker.

Format strings use two placeholders, filled by plain substitution (user text may contain braces):
`{system}` in `system_format` and `{content}` in `user_format` / `answer_format`; `image_format` may use
`{n}`, the 1-based number of the image in the conversation (Qwen-VL "Picture N:").
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from typing import Any

from .config import check_known_keys
from .constants import IMAGE_TOKEN
from .errors import ConfigError, VlmkitError
from .registry import Registry

ROLES = ("system", "user", "assistant")
PLACEMENTS = ("inline", "prefix", "after_text")


@dataclass(frozen=True)
class Message:
    """One chat turn. `content` may hold `<image>` markers; `images` is the number of images attached."""

    role: str
    content: str
    images: int = 0


@dataclass(frozen=True)
class Rendered:
    """A rendered conversation and the [start, end) char spans of each assistant answer incl. terminator."""

    text: str
    assistant_spans: list[tuple[int, int]]


@dataclass(frozen=True)
class Template:
    """A chat format. Rendered as: prefix, prefix images, system block, then user / assistant turns.

    Fields:
        name: registry id.
        prefix: literal text at the very start (e.g. "<|begin_of_text|>").
        system_format: system block with "{system}"; skipped when the system is empty unless
            `keep_empty_system`; "" means the format has no system slot (a system message is then an error).
        default_system: system text used when the conversation has no system message.
        keep_empty_system: render `system_format` even for an empty system (MiniGPT-4's leading "###").
        user_format: one user turn with "{content}".
        assistant_prompt: text that opens an assistant turn ("ASSISTANT:"); not part of the answer span.
        answer_format: one assistant answer with "{content}" and its terminator; this is the answer span.
        answer_suffix: text after each answer that is not trained on (ChatML's "\\n" after "<|im_end|>").
        image_placement: "inline" keeps markers where written; "prefix" moves every image to the start;
            "after_text" puts each user turn's images after its text, so that image tokens (under causal
            attention) see the question they are asked about.
        image_format: what one image becomes, containing the "<image>" marker once; "{n}" = image number.
        image_eats_newline: an inline marker followed by "\\n" absorbs it (the wrapper brings its own separator).
        missing_image_prefix: prepended per image a user message has no marker for (LLaVA's "<image>\\n").
        add_bos: the processor prepends the tokenizer's bos token.
        append_eos: the processor appends eos after the final answer when training.
        stop_strings: generation stops at (and `parse_response` cuts at) the first of these.
        response_markers: `parse_response` keeps the text after the last occurrence of the first marker
            found (VisualGLM "答：" / "A:"), for decoders that return the prompt too.
    """

    name: str
    prefix: str = ""
    system_format: str = "{system}"
    default_system: str = ""
    keep_empty_system: bool = False
    user_format: str = "{content}"
    assistant_prompt: str = ""
    answer_format: str = "{content}"
    answer_suffix: str = ""
    image_placement: str = "inline"
    image_format: str = IMAGE_TOKEN
    image_eats_newline: bool = False
    missing_image_prefix: str = IMAGE_TOKEN + "\n"
    add_bos: bool = True
    append_eos: bool = False
    stop_strings: tuple[str, ...] = ()
    response_markers: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        _check_template(self)

    def render(self, messages: list[Message], add_generation_prompt: bool = False) -> Rendered:
        """Render `messages` into text and the assistant answer spans (see module docstring)."""
        system, turns = _split_system(self, messages)
        contents, n_images = _place_images(self, turns)
        out = _Builder()
        out.add(self.prefix)
        if self.image_placement == "prefix":
            out.add("".join(_image_text(self, i + 1) for i in range(n_images)))
        if self.system_format and (system or self.keep_empty_system):
            out.add(_fill(self.system_format, "{system}", system))
        for msg, content in zip(turns, contents):
            if msg.role == "user":
                out.add(_fill(self.user_format, "{content}", content))
            else:
                out.add(self.assistant_prompt)
                out.add(_fill(self.answer_format, "{content}", content), span=True)
                out.add(self.answer_suffix)
        if add_generation_prompt and turns and turns[-1].role == "user":
            out.add(self.assistant_prompt)
        return Rendered(text=out.text(), assistant_spans=out.spans)

    def parse_response(self, text: str) -> str:
        """Clean generated text: keep what follows the last response marker, cut at stop strings, strip."""
        for marker in self.response_markers:
            if marker in text:
                text = text.rsplit(marker, 1)[1]
                break
        cut = min((i for i in (text.find(s) for s in self.stop_strings if s) if i >= 0), default=len(text))
        return text[:cut].strip()

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (tuples become lists); stored with checkpoints."""
        d = asdict(self)
        d["stop_strings"] = list(self.stop_strings)
        d["response_markers"] = list(self.response_markers)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Template:
        """Inverse of `to_dict`; unknown keys raise `ConfigError`, missing keys take the defaults."""
        check_known_keys(cls, d, "template field(s)")
        if "name" not in d:
            raise ConfigError("template dict has no 'name'")
        kw = dict(d)
        for key in ("stop_strings", "response_markers"):
            if key in kw:
                kw[key] = tuple(kw[key])
        return cls(**kw)


class _Builder:
    """Concatenates text pieces and records the spans of the ones marked as answers."""

    def __init__(self) -> None:
        self._parts: list[str] = []
        self._len = 0
        self.spans: list[tuple[int, int]] = []

    def add(self, piece: str, span: bool = False) -> None:
        if span:
            self.spans.append((self._len, self._len + len(piece)))
        self._parts.append(piece)
        self._len += len(piece)

    def text(self) -> str:
        return "".join(self._parts)


def _fill(fmt: str, key: str, value: str) -> str:
    return fmt.replace(key, value)


def _check_template(t: Template) -> None:
    if t.image_placement not in PLACEMENTS:
        raise ConfigError(f"template '{t.name}': image_placement must be one of {PLACEMENTS}, "
                          f"got '{t.image_placement}'")
    if "{content}" not in t.user_format or "{content}" not in t.answer_format:
        raise ConfigError(f"template '{t.name}': user_format and answer_format must contain '{{content}}'")
    if t.system_format and "{system}" not in t.system_format:
        raise ConfigError(f"template '{t.name}': system_format must contain '{{system}}' or be empty")
    if t.image_format.count(IMAGE_TOKEN) != 1:
        raise ConfigError(f"template '{t.name}': image_format must contain '{IMAGE_TOKEN}' exactly once")
    if isinstance(t.stop_strings, str) or isinstance(t.response_markers, str):
        raise ConfigError(f"template '{t.name}': stop_strings and response_markers must be sequences of strings")


def _split_system(t: Template, messages: list[Message]) -> tuple[str, list[Message]]:
    """Return the system text (message or default) and the user/assistant turns, checking the order."""
    for i, m in enumerate(messages):
        if m.role not in ROLES:
            raise VlmkitError(f"message {i} has role '{m.role}'; expected one of {ROLES}")
        if m.images < 0:
            raise VlmkitError(f"message {i} has a negative image count ({m.images})")
    system = t.default_system
    turns = list(messages)
    if turns and turns[0].role == "system":
        if turns[0].images or IMAGE_TOKEN in turns[0].content:
            raise VlmkitError("the system message cannot carry images; attach them to a user message")
        if not t.system_format and turns[0].content:
            raise VlmkitError(f"template '{t.name}' has no system prompt; remove the system message")
        system, turns = turns[0].content, turns[1:]
    for i, m in enumerate(turns):
        expected = "user" if i % 2 == 0 else "assistant"
        if m.role != expected:
            raise VlmkitError(f"turn {i} is from '{m.role}' but '{expected}' was expected: after an optional "
                              "first system message, turns must alternate user, assistant, user, ...")
    return system, turns


def _place_images(t: Template, turns: list[Message]) -> tuple[list[str], int]:
    """Check marker counts and rewrite each turn's content; returns contents and the total image count."""
    contents: list[str] = []
    counter = 0
    for i, m in enumerate(turns):
        markers = m.content.count(IMAGE_TOKEN)
        if markers > m.images:
            raise VlmkitError(f"turn {i} ({m.role}) has {markers} '{IMAGE_TOKEN}' marker(s) but only "
                              f"{m.images} image(s) attached; remove markers or attach images")
        if m.images and m.role != "user":
            raise VlmkitError(f"turn {i} ({m.role}) has {m.images} image(s); only user messages carry images")
        if t.image_placement == "prefix":
            contents.append(_strip_markers(m.content))
        elif t.image_placement == "after_text":
            images = [_image_text(t, counter + k + 1) for k in range(m.images)]
            contents.append("\n".join(p for p in (_strip_markers(m.content).strip(), *images) if p))
            counter += m.images
        else:
            content = t.missing_image_prefix * (m.images - markers) + m.content
            content, counter = _wrap_inline(t, content, counter)
            contents.append(content)
        if t.image_placement == "prefix":
            counter += m.images
    return contents, counter


def _strip_markers(content: str) -> str:
    """Remove image markers: one inside a sentence ("Compare <image> with") leaves a single space."""
    marker = re.escape(IMAGE_TOKEN)
    content = re.sub(rf"(?<=\S)[ \t]*(?:{marker}[ \t]*)+(?=\S)", " ", content)
    return re.sub(marker + "\n?", "", content)


def _wrap_inline(t: Template, content: str, counter: int) -> tuple[str, int]:
    pattern = re.escape(IMAGE_TOKEN) + ("\n?" if t.image_eats_newline else "")
    pieces = re.split(pattern, content)
    out = [pieces[0]]
    for piece in pieces[1:]:
        counter += 1
        out.append(_image_text(t, counter))
        out.append(piece)
    return "".join(out), counter


def _image_text(t: Template, n: int) -> str:
    return t.image_format.replace("{n}", str(n))


TEMPLATES = Registry[Template]("template")

VICUNA_SYSTEM = ("A chat between a curious user and an artificial intelligence assistant. "
                 "The assistant gives helpful, detailed, and polite answers to the user's questions.")
MINIGPT4_SYSTEM = ("Give the following image: <Img>ImageContent</Img>. You will be able to see the image once "
                   "I provide it to you. Please answer my questions.")


def _cogvlm(name: str, answer_word: str) -> Template:
    return Template(name=name, system_format="{system}\n", user_format="Question: {content}",
                    assistant_prompt=f" {answer_word}:", answer_format=" {content}\n", image_placement="prefix",
                    add_bos=True, append_eos=True, stop_strings=("\nQuestion:", "</s>"))


_BUILTIN: tuple[Template, ...] = (
    # CogVLM's chat format with each image after its question ("Question: q\n<image> Answer: a\n"): the
    # embedded default model's template (a small LM learns "find the asked object" far faster this way).
    Template(name="vlmkit-chat", system_format="{system}\n", user_format="Question: {content}",
             assistant_prompt=" Answer:", answer_format=" {content}\n", image_placement="after_text",
             add_bos=True, append_eos=True, stop_strings=("\nQuestion:", "</s>")),
    Template(name="vicuna", system_format="{system} ", default_system=VICUNA_SYSTEM,
             user_format="USER: {content} ", assistant_prompt="ASSISTANT:", answer_format=" {content}</s>",
             add_bos=True, stop_strings=("</s>", "USER:")),
    Template(name="llama3", prefix="<|begin_of_text|>",
             system_format="<|start_header_id|>system<|end_header_id|>\n\n{system}<|eot_id|>",
             user_format="<|start_header_id|>user<|end_header_id|>\n\n{content}<|eot_id|>",
             assistant_prompt="<|start_header_id|>assistant<|end_header_id|>\n\n",
             answer_format="{content}<|eot_id|>", add_bos=False, stop_strings=("<|eot_id|>", "</s>")),
    Template(name="chatml", system_format="<|im_start|>system\n{system}<|im_end|>\n",
             default_system="You are a helpful assistant.",
             user_format="<|im_start|>user\n{content}<|im_end|>\n", assistant_prompt="<|im_start|>assistant\n",
             answer_format="{content}<|im_end|>", answer_suffix="\n",
             image_format="Picture {n}: <img><image></img>\n", image_eats_newline=True,
             add_bos=False, stop_strings=("<|im_end|>", "<|im_start|>", "</s>")),
    Template(name="visualglm", system_format="{system}\n", user_format="问：{content}\n", assistant_prompt="答：",
             answer_format="{content}\n", image_placement="prefix", image_format="<img><image></img>",
             add_bos=False, append_eos=True, stop_strings=("\n问：", "\nQ:", "</s>"),
             response_markers=("答：", "A:")),
    Template(name="cogvlm-base", system_format="{system}\n", image_placement="prefix", add_bos=True,
             append_eos=True, stop_strings=("\nQuestion:", "</s>")),
    _cogvlm("cogvlm-chat", "Answer"),
    _cogvlm("cogvlm-vqa", "Short answer"),
    Template(name="minigpt4", system_format="{system}###", default_system=MINIGPT4_SYSTEM,
             keep_empty_system=True, user_format="Human: {content}", assistant_prompt="###Assistant: ",
             answer_format="{content}###", image_format="<Img><image></Img> ", image_eats_newline=True,
             add_bos=True, append_eos=True, stop_strings=("###", "</s>")),
    # LLaMA-2-chat as used by MiniGPT-v2: "[INST] <Img><image></Img> [vqa] q [/INST] a</s>", no system.
    Template(name="llama2", system_format="<<SYS>>\n{system}\n<</SYS>>\n\n", user_format="[INST] {content}",
             assistant_prompt=" [/INST]", answer_format=" {content}</s>", image_format="<Img><image></Img> ",
             image_eats_newline=True, add_bos=True, stop_strings=("</s>", "[INST]")),
    Template(name="plain", system_format="", answer_format="{content}\n", missing_image_prefix=IMAGE_TOKEN,
             add_bos=True, append_eos=True, stop_strings=("\n", "</s>")),
)
for _t in _BUILTIN:
    TEMPLATES.add(_t.name, _t)


def get_template(name: str) -> Template:
    """The registered template called `name`; unknown names raise `ConfigError` listing the known ones."""
    return TEMPLATES.get(name)
