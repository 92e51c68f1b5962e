"""Chat templates: exact reference renderings, answer spans, image placement, errors, serialization."""

from __future__ import annotations

import json

import pytest

from vlmkit.errors import ConfigError, VlmkitError
from vlmkit.templates import TEMPLATES, Message, Template, get_template

VICUNA_SYS = ("A chat between a curious user and an artificial intelligence assistant. "
              "The assistant gives helpful, detailed, and polite answers to the user's questions.")
MINIGPT4_SYS = ("Give the following image: <Img>ImageContent</Img>. You will be able to see the image once "
                "I provide it to you. Please answer my questions.")

CONV = [
    Message("user", "<image>\nWhat color is the circle?", images=1),
    Message("assistant", "Red."),
    Message("user", "How many squares?"),
    Message("assistant", "3"),
]

# name -> (full rendering, answer spans, ending added by add_generation_prompt after CONV[:3])
EXPECTED: dict[str, tuple[str, list[str], str]] = {
    "vicuna": (
        VICUNA_SYS + " USER: <image>\nWhat color is the circle? ASSISTANT: Red.</s>USER: How many squares? "
        "ASSISTANT: 3</s>",
        [" Red.</s>", " 3</s>"],
        "USER: How many squares? ASSISTANT:",
    ),
    "llama3": (
        "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\n<image>\nWhat color is the circle?<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\nRed.<|eot_id|>"
        "<|start_header_id|>user<|end_header_id|>\n\nHow many squares?<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\n3<|eot_id|>",
        ["Red.<|eot_id|>", "3<|eot_id|>"],
        "How many squares?<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n",
    ),
    "chatml": (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
        "<|im_start|>user\nPicture 1: <img><image></img>\nWhat color is the circle?<|im_end|>\n"
        "<|im_start|>assistant\nRed.<|im_end|>\n<|im_start|>user\nHow many squares?<|im_end|>\n"
        "<|im_start|>assistant\n3<|im_end|>\n",
        ["Red.<|im_end|>", "3<|im_end|>"],
        "How many squares?<|im_end|>\n<|im_start|>assistant\n",
    ),
    "visualglm": (
        "<img><image></img>问：What color is the circle?\n答：Red.\n问：How many squares?\n答：3\n",
        ["Red.\n", "3\n"],
        "问：How many squares?\n答：",
    ),
    "cogvlm-base": (
        "<image>What color is the circle?Red.How many squares?3",
        ["Red.", "3"],
        "Red.How many squares?",
    ),
    "cogvlm-chat": (
        "<image>Question: What color is the circle? Answer: Red.\nQuestion: How many squares? Answer: 3\n",
        [" Red.\n", " 3\n"],
        "Question: How many squares? Answer:",
    ),
    "cogvlm-vqa": (
        "<image>Question: What color is the circle? Short answer: Red.\n"
        "Question: How many squares? Short answer: 3\n",
        [" Red.\n", " 3\n"],
        "Question: How many squares? Short answer:",
    ),
    "minigpt4": (
        MINIGPT4_SYS + "###Human: <Img><image></Img> What color is the circle?###Assistant: Red.###"
        "Human: How many squares?###Assistant: 3###",
        ["Red.###", "3###"],
        "###Human: How many squares?###Assistant: ",
    ),
    "llama2": (
        "[INST] <Img><image></Img> What color is the circle? [/INST] Red.</s>[INST] How many squares? [/INST] 3</s>",
        [" Red.</s>", " 3</s>"],
        "[INST] How many squares? [/INST]",
    ),
    "vlmkit-chat": (
        "Question: What color is the circle?\n<image> Answer: Red.\nQuestion: How many squares? Answer: 3\n",
        [" Red.\n", " 3\n"],
        "Question: How many squares? Answer:",
    ),
    "plain": (
        "<image>\nWhat color is the circle?Red.\nHow many squares?3\n",
        ["Red.\n", "3\n"],
        "Red.\nHow many squares?",
    ),
}


def test_every_registered_template_has_a_reference() -> None:
    assert sorted(EXPECTED) == TEMPLATES.names()


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_reference_rendering_and_spans(name: str) -> None:
    text, answers, _ = EXPECTED[name]
    r = get_template(name).render(CONV)
    assert r.text == text
    assert [r.text[a:b] for a, b in r.assistant_spans] == answers
    assert r.text.count("<image>") == 1


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_generation_prompt(name: str) -> None:
    t = get_template(name)
    ending = EXPECTED[name][2]
    gen = t.render(CONV[:3], add_generation_prompt=True)
    assert gen.text.endswith(ending)
    assert gen.text == t.render(CONV[:3]).text + t.assistant_prompt
    assert EXPECTED[name][0].startswith(gen.text)
    assert len(gen.assistant_spans) == 1
    # a conversation ending with the assistant gets no extra prompt
    assert t.render(CONV, add_generation_prompt=True).text == EXPECTED[name][0]


def test_plain_pretraining_caption() -> None:
    r = get_template("plain").render([Message("user", "", images=1), Message("assistant", "A red circle.")])
    assert r.text == "<image>A red circle.\n"
    assert [r.text[a:b] for a, b in r.assistant_spans] == ["A red circle.\n"]


def test_missing_markers_are_prepended_llava_style() -> None:
    r = get_template("vicuna").render([Message("system", "S"), Message("user", "Compare.", images=2)])
    assert r.text == "S USER: <image>\n<image>\nCompare. "
    r = get_template("vicuna").render([Message("system", "S"), Message("user", "A <image> B", images=2)])
    assert r.text == "S USER: <image>\nA <image> B "


def test_minigpt4_wrapper_without_marker() -> None:
    r = get_template("minigpt4").render([Message("user", "Describe it.", images=1)], add_generation_prompt=True)
    assert r.text == MINIGPT4_SYS + "###Human: <Img><image></Img> Describe it.###Assistant: "


def test_chatml_numbers_pictures_across_the_conversation() -> None:
    msgs = [Message("user", "Compare.", images=2), Message("assistant", "Same."),
            Message("user", "<image>\nAnd this?", images=1)]
    text = get_template("chatml").render(msgs).text
    assert ("<|im_start|>user\nPicture 1: <img><image></img>\nPicture 2: <img><image></img>\nCompare.<|im_end|>"
            in text)
    assert "<|im_start|>user\nPicture 3: <img><image></img>\nAnd this?<|im_end|>\n" in text
    assert text.count("<image>") == 3


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_more_markers_than_images_is_an_error(name: str) -> None:
    with pytest.raises(VlmkitError, match=r"2 '<image>' marker\(s\) but only 1 image"):
        get_template(name).render([Message("user", "<image> and <image>", images=1)])


def test_images_only_on_user_messages() -> None:
    t = get_template("vicuna")
    with pytest.raises(VlmkitError, match="only user messages"):
        t.render([Message("user", "q"), Message("assistant", "a", images=1)])
    with pytest.raises(VlmkitError, match="marker"):
        t.render([Message("user", "q"), Message("assistant", "see <image>")])
    with pytest.raises(VlmkitError, match="system message cannot carry images"):
        t.render([Message("system", "<image>"), Message("user", "q")])


def test_role_order_is_checked() -> None:
    t = get_template("vicuna")
    with pytest.raises(VlmkitError, match="alternate"):
        t.render([Message("assistant", "hi")])
    with pytest.raises(VlmkitError, match="alternate"):
        t.render([Message("user", "a"), Message("user", "b")])
    with pytest.raises(VlmkitError, match="role 'bot'"):
        t.render([Message("bot", "a")])


@pytest.mark.parametrize("name", ["cogvlm-chat", "cogvlm-vqa", "cogvlm-base", "visualglm"])
def test_prefix_templates_move_images_to_the_start(name: str) -> None:
    msgs = [Message("user", "Hi."), Message("assistant", "Hello."),
            Message("user", "What is <image>\nthis?", images=1)]
    text = get_template(name).render(msgs, add_generation_prompt=True).text
    wrapped = "<img><image></img>" if name == "visualglm" else "<image>"
    assert text.startswith(wrapped)
    assert text.count("<image>") == 1
    assert "What is this?" in text


def test_after_text_placement_puts_each_turns_images_after_its_question() -> None:
    t = get_template("vlmkit-chat")
    msgs = [Message("user", "<image>\nWhat is this?", images=1), Message("assistant", "A circle."),
            Message("user", "And now?"), Message("assistant", "Still."),
            Message("user", "Compare these:<image>", images=2)]
    text = t.render(msgs, add_generation_prompt=True).text
    assert text == ("Question: What is this?\n<image> Answer: A circle.\nQuestion: And now? Answer: Still.\n"
                    "Question: Compare these:\n<image>\n<image> Answer:")
    # an image without text (a caption prompt) stands alone
    assert t.render([Message("user", "<image>", images=1)], add_generation_prompt=True).text == \
        "Question: <image> Answer:"


def test_after_text_marker_inside_a_sentence_leaves_one_space() -> None:
    t = get_template("vlmkit-chat")
    msgs = [Message("user", "Compare <image> with <image><image> now", images=3)]
    assert t.render(msgs, add_generation_prompt=True).text == \
        "Question: Compare with now\n<image>\n<image>\n<image> Answer:"

def test_after_text_numbers_images_across_turns() -> None:
    t = Template(name="x", user_format="U: {content}\n", answer_format="{content}\n",
                 image_placement="after_text", image_format="[img {n}]<image>")
    msgs = [Message("user", "a", images=1), Message("assistant", "b"), Message("user", "c", images=1)]
    assert t.render(msgs).text == "U: a\n[img 1]<image>\nb\nU: c\n[img 2]<image>\n"


def test_cogvlm_two_images_have_no_separator() -> None:
    r = get_template("cogvlm-chat").render([Message("user", "<image>Q", images=2)], add_generation_prompt=True)
    assert r.text == "<image><image>Question: Q Answer:"


def test_system_message_overrides_default() -> None:
    conv = [Message("system", "Be brief."), *CONV[:1]]
    assert get_template("vicuna").render(conv).text == "Be brief. USER: <image>\nWhat color is the circle? "
    assert get_template("chatml").render(conv).text.startswith("<|im_start|>system\nBe brief.<|im_end|>\n")
    assert get_template("llama3").render(conv).text.startswith(
        "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nBe brief.<|eot_id|>"
        "<|start_header_id|>user<|end_header_id|>")
    assert get_template("minigpt4").render(conv).text.startswith("Be brief.###Human: ")
    assert get_template("minigpt4").render([Message("system", ""), *CONV[:1]]).text.startswith("###Human: ")
    assert get_template("vicuna").render([Message("system", ""), *CONV[:1]]).text.startswith("USER: ")
    with pytest.raises(VlmkitError, match="no system prompt"):
        get_template("plain").render(conv)


def test_braces_in_content_are_literal() -> None:
    r = get_template("vicuna").render([Message("system", "S"), Message("user", "{system} {content} {<1>}")])
    assert r.text == "S USER: {system} {content} {<1>} "


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_to_dict_round_trip(name: str) -> None:
    t = get_template(name)
    d = json.loads(json.dumps(t.to_dict()))
    back = Template.from_dict(d)
    assert back == t
    assert back.render(CONV) == t.render(CONV)


def test_from_dict_rejects_bad_input() -> None:
    d = get_template("vicuna").to_dict()
    with pytest.raises(ConfigError, match="unknown template field"):
        Template.from_dict({**d, "sep2": "</s>"})
    with pytest.raises(ConfigError, match="image_placement"):
        Template.from_dict({**d, "image_placement": "suffix"})
    with pytest.raises(ConfigError, match="name"):
        Template.from_dict({k: v for k, v in d.items() if k != "name"})


def test_get_template_unknown_lists_known() -> None:
    with pytest.raises(ConfigError, match="known templates: chatml"):
        get_template("nope")


def test_flags() -> None:
    assert get_template("vicuna").add_bos and not get_template("vicuna").append_eos
    assert not get_template("llama3").add_bos and not get_template("chatml").add_bos
    for name in ("visualglm", "cogvlm-base", "cogvlm-chat", "cogvlm-vqa", "minigpt4", "plain"):
        assert get_template(name).append_eos
    assert all(get_template(n).add_bos for n in ("cogvlm-base", "cogvlm-chat", "cogvlm-vqa"))
    assert "\nQuestion:" in get_template("cogvlm-chat").stop_strings
    assert "###" in get_template("minigpt4").stop_strings


@pytest.mark.parametrize(
    ("name", "generated", "answer"),
    [
        ("vicuna", " Red.</s>", "Red."),
        ("vicuna", " Red. USER: more", "Red."),
        ("llama3", "Red.<|eot_id|>", "Red."),
        ("chatml", "3<|im_end|>\n<|im_start|>user", "3"),
        ("visualglm", "<img><image></img>问：颜色？\n答：红色\n问：形状？\n答： 圆形\n", "圆形"),
        ("visualglm", "Q:What color?\nA: blue", "blue"),
        ("visualglm", "just text", "just text"),
        ("cogvlm-chat", " Red.\nQuestion: next", "Red."),
        ("cogvlm-vqa", " [[086,540,400,760]]\n", "[[086,540,400,760]]"),
        ("minigpt4", "Red.###Human: more", "Red."),
        ("plain", "A red circle.\nmore", "A red circle."),
    ],
)
def test_parse_response(name: str, generated: str, answer: str) -> None:
    assert get_template(name).parse_response(generated) == answer
