"""Evaluation metrics against values worked out by hand from the official tools' rules, quirks included."""

from __future__ import annotations

import math

import pytest

from vlmkit.eval.metrics import captioning, exact, grounding, multiple_choice, pope, ptb, vqa

# ------------------------------------------------------------------------------------------------- VQAv2
TEN_DOGS = ["dog"] * 10


@pytest.mark.parametrize("k, expected", [(0, 0.0), (1, 0.3), (2, 0.6), (3, 0.9), (4, 1.0), (10, 1.0)])
def test_vqa_soft_accuracy_ten_choose_nine(k, expected):
    # k matching answers: (k * min(1, (k-1)/3) + (10-k) * min(1, k/3)) / 10
    answers = ["yes"] * k + ["no"] * (10 - k)
    assert vqa.vqav2_accuracy("yes", answers) == pytest.approx(expected)


def test_vqa_normalizes_only_when_the_ten_answers_disagree():
    assert vqa.vqav2_accuracy("dog", TEN_DOGS) == 1.0
    assert vqa.vqav2_accuracy("the dog.", TEN_DOGS) == 0.0  # identical answers: compared raw
    assert vqa.vqav2_accuracy("Dog", TEN_DOGS) == 0.0
    assert vqa.vqav2_accuracy(" dog\n", TEN_DOGS) == 1.0  # newlines/tabs -> spaces and strip happen always
    disagree = ["dog"] * 9 + ["puppy"]
    assert vqa.vqav2_accuracy("the dog.", disagree) == 1.0  # normalized: article and period dropped


def test_vqa_number_words_and_none():
    answers = ["2"] * 3 + ["3"] * 7
    assert vqa.vqav2_accuracy("two", answers) == pytest.approx(0.9)  # "two" -> "2": 3 matches
    assert vqa.vqav2_accuracy("two", ["2"] * 10) == 0.0  # all identical: no normalization
    assert vqa.normalize_answer("None") == "0"
    assert vqa.normalize_answer("Ten dogs") == "10 dogs"


def test_vqa_punctuation_quirks():
    # a mark touching a space anywhere in the text is deleted everywhere, else it becomes a space
    assert vqa.process_punctuation("red,white") == "red white"
    assert vqa.process_punctuation("red, white") == "red white"
    assert vqa.process_punctuation("a-b c -d") == "ab c d"
    assert vqa.process_punctuation("1,000 red-white") == "1000 redwhite"  # digit,digit deletes all marks
    assert vqa.process_punctuation("3.5 dogs.") == "3.5 dogs"  # a period before a digit stays
    # re.UNICODE (32) is passed as `count`: only the first 32 periods go
    assert vqa.process_punctuation("x." * 40) == "x" * 32 + "x." * 8


def test_vqa_contractions_after_lowercasing():
    assert vqa.normalize_answer("dont") == "don't"
    assert vqa.normalize_answer("Im") == "im"  # the map's key "Im" can never match lower-cased text
    assert vqa.normalize_answer("an apple") == "apple"


def test_textvqa_always_normalizes_and_splits_possessive():
    assert vqa.normalize_textvqa("The Dog's bowl?") == "dog 's bowl"
    assert vqa.textvqa_accuracy("The dog.", TEN_DOGS) == 1.0  # normalized even though all agree
    assert vqa.textvqa_accuracy("two", ["2"] * 10) == 1.0


def test_vizwiz_normalizes_the_prediction_only_with_its_curly_contractions():
    assert vqa.normalize_vizwiz("dont") == "don\u2019t"
    assert vqa.vizwiz_accuracy("dont", ["don't"] * 10) == 0.0
    assert vqa.vizwiz_accuracy("The dog.", TEN_DOGS) == 1.0
    assert vqa.vizwiz_accuracy("dog", ["Dog"] * 10) == 0.0  # human answers are compared as stored
    # the VQAv2 script with disagreeing answers maps "dont" to the ASCII form
    assert vqa.vqav2_accuracy("dont", ["don't"] * 9 + ["no"]) == 1.0


# ------------------------------------------------------------------------------------------ multiple choice
@pytest.mark.parametrize("text, letter", [("B", "B"), ("B. blue", "B"), ("The answer is A.", "A"),
                                          ("The answer is A", "FAILED"), ("b", "FAILED"), (" B", "FAILED"),
                                          ("The answer is A. The answer is B.", "FAILED")])
def test_scienceqa_letter_rules(text, letter):
    assert multiple_choice.scienceqa_letter(text) == letter


def test_scienceqa_letter_beyond_the_choices_is_wrong():
    assert multiple_choice.scienceqa_correct("C", 2, 3)
    assert not multiple_choice.scienceqa_correct("E", 4, 3)


CHOICES = {"A": "cat", "B": "dog", "C": "red bird"}


@pytest.mark.parametrize("answer, letter", [
    ("B", "B"), ("(C)", "C"), ("Answer: A.", "A"), ("The correct answer is **C**", "C"),
    ("dog", "B"), ("a red bird", "C"),
    ("I think it is the dog", "B"),
    ("I think the animal in this picture is probably a dog", None),  # over twice the options' text: not searched
    ("A or B", None), ("Z", "Z"), ("Cannot determine the answer", "Z"),
    ("A b c d e f g", None),  # the letter is not among the last words
])
def test_mmbench_exact_matching(answer, letter):
    assert multiple_choice.mmbench_letter(answer, CHOICES) == letter


def test_mmbench_circular_groups_need_every_rotation_right():
    assert multiple_choice.circular_group(3_000_005) == 5
    rows = [multiple_choice.ChoiceRecord("5", True, True), multiple_choice.ChoiceRecord("5", False, True),
            multiple_choice.ChoiceRecord("5", False, False), multiple_choice.ChoiceRecord("7", True, True),
            multiple_choice.ChoiceRecord("7", False, True)]
    assert multiple_choice.circular_hits(rows) == {"5": False, "7": True}
    rotated, answer = multiple_choice.rotate_choices(["a", "b", "c", "d"], 1, 1)
    assert rotated == ["b", "c", "d", "a"] and rotated[answer] == "b"


# ---------------------------------------------------------------------------------------------------- POPE
def test_pope_answer_rule():
    assert pope.pope_answer("No, there is no dog.") == "no"
    assert pope.pope_answer("There is not a dog") == "no"
    assert pope.pope_answer("Yes. No doubt.") == "yes"  # only the first sentence counts
    assert pope.pope_answer("NO") == "yes" and pope.pope_answer("no!") == "yes"  # exact words only


def test_pope_counts_and_scores():
    preds = ["Yes", "yes", "No", "no", "Yes", "NO"]
    labels = ["yes", "no", "no", "yes", "yes", "no"]
    s = pope.pope_scores(preds, labels)
    # predictions: 1 1 0 0 1 1; labels: 1 0 0 1 1 0 -> TP 2, FP 2, TN 1, FN 1
    assert (s.tp, s.fp, s.tn, s.fn) == (2, 2, 1, 1)
    assert s.accuracy == pytest.approx(3 / 6) and s.precision == pytest.approx(0.5)
    assert s.recall == pytest.approx(2 / 3) and s.f1 == pytest.approx(2 * 0.5 * (2 / 3) / (0.5 + 2 / 3))
    assert s.yes_ratio == pytest.approx(4 / 6)
    assert pope.pope_scores(["no"], ["yes"]).precision == 0.0  # the official script divides by zero here


# ----------------------------------------------------------------------------------------------- grounding
@pytest.mark.parametrize("a, b, expected", [
    ((0, 0, 10, 10), (0, 0, 10, 10), 1.0), ((0, 0, 10, 10), (5, 0, 15, 10), 50 / 150),
    ((0, 0, 10, 10), (10, 0, 20, 10), 0.0),  # touching
    ((5, 5, 5, 5), (5, 5, 5, 5), 0.0), ((5, 5, 5, 9), (0, 0, 10, 10), 0.0),  # zero area
    ((10, 10, 0, 0), (0, 0, 10, 10), 1.0), ((10, 0, 0, 10), (0, 0, 5, 10), 0.5),  # swapped corners
])
def test_iou_edge_cases(a, b, expected):
    assert grounding.iou(a, b) == pytest.approx(expected)


@pytest.mark.parametrize("text, size, box", [
    ("the dog [[100,200,300,400]]", (1000, 500), (100, 100, 300, 200)),  # CogVLM, /1000
    ("<p>dog</p> {<10><20><30><40>}", (200, 100), (20, 20, 60, 40)),  # MiniGPT-v2, /100
    ("<ref>dog</ref><box>(100,200),(300,400)</box>", (999, 999), (100, 200, 300, 400)),  # Qwen-VL, /999
    ("(0,0),(999,999)</box>", (100, 50), (0, 0, 100, 50)),  # Qwen-VL answer after the prompt's <box>
    ("[0.1, 0.2, 0.5, 0.6]", (100, 200), (10, 40, 50, 120)),  # normalized
    ("It is at [10, 20, 30, 40].", (100, 200), (10, 20, 30, 40)),  # pixels
])
def test_parse_box_formats(text, size, box):
    assert grounding.parse_box(text, *size) == pytest.approx(box)


def test_parse_box_none_and_acc():
    assert grounding.parse_box("no box here", 10, 10) is None
    assert grounding.parse_box("[[5,5,5,9]]", 100, 100) is None  # an empty CogVLM box is not read as plain
    assert grounding.accuracy_at([0.5, 0.49, 0.9, 0.0]) == 0.5


# ---------------------------------------------------------------------------------------------- captioning
def test_cider_d_by_hand():
    refs = {1: ["a b"], 2: ["c d"]}
    hyps = {1: "a b", 2: "c"}
    # every n-gram has df 1 of N=2 images, so all weights are log 2 and cancel in the cosines.
    # image 1: cos = 1 for 1- and 2-grams, 0 for 3-,4-grams -> mean 0.5, x10 -> 5.
    # image 2: unigram cos = 1/sqrt(2); length = number of bigrams (0 vs 1) -> penalty exp(-1/72).
    expected_2 = 10 * (1 / math.sqrt(2)) * math.exp(-1 / 72) / 4
    score, per_image = captioning.cider_d(refs, hyps)
    assert per_image == pytest.approx([5.0, expected_2], rel=1e-12)
    assert score == pytest.approx((5.0 + expected_2) / 2, rel=1e-12)
    assert captioning.cider_d({1: ["a b"]}, {1: "a b"})[0] == 0.0  # one image: idf log(1) = 0


def test_bleu_by_hand_with_smoothing_quirk():
    assert captioning.bleu({1: ["a b c d"]}, {1: "a b c d"}) == pytest.approx([1, 1, 1, 1], abs=1e-8)
    b = captioning.bleu({1: ["a b c d"]}, {1: "a b"})
    bp = math.exp(1 - 4 / 2)
    # no 3-grams guessed: (0 + 1e-15) / (0 + 1e-9) = 1e-6 instead of 0
    assert b == pytest.approx([bp, bp, (1e-6) ** (1 / 3) * bp, (1e-12) ** (1 / 4) * bp], rel=1e-6)
    # "closest" reference length, ties to the shorter (3, not 5): no brevity penalty
    assert captioning.bleu({1: ["a b c", "a b c d e"]}, {1: "a b c d"})[0] == pytest.approx(1.0, rel=1e-6)


def test_rouge_l_by_hand():
    p, r = 2 / 3, 2 / 4  # LCS("a b c", "a c d e") = 2
    expected = (1 + 1.2 ** 2) * p * r / (r + 1.2 ** 2 * p)
    assert captioning.rouge_l_single("a b c", ["a c d e", "x"]) == pytest.approx(expected)
    assert captioning.rouge_l_single("", ["a"]) == 0.0


def test_ptb_tokenizer_rules():
    # outputs of CoreNLP 3.4.1 `PTBTokenizer -preserveLines -lowerCase` on these lines
    lines = ['A man\'s hat (brown) isn\'t "big"...', "He cannot go to the U.S. today, etc.", "café—naïve 1,000 $5"]
    assert ptb.python_tokenize_lines(lines) == [
        "a man 's hat -lrb- brown -rrb- is n't `` big '' ...",
        "he can not go to the u.s. today , etc.", "café -- naïve 1,000 $ 5"]
    # an abbreviation before a capital (here on the next line) also yields a sentence-final period
    assert ptb.python_tokenize_lines(["He cannot go, etc.", "The end"]) == ["he can not go , etc. .", "the end"]
    out = ptb.tokenize_captions({"x": lines}, backend="python")["x"]
    assert out[0] == "a man 's hat -lrb- brown -rrb- is n't big"  # lower-case -lrb- survives (a quirk)
    assert out[1] == "he can not go to the u.s. today etc."


def test_caption_scores_tokenize_before_scoring():
    refs = {"1": ["A dog runs.", "The dog is running!"], "2": ["Two cats sleep."]}
    out = captioning.caption_scores(refs, {"1": "a dog runs", "2": "two cats, sleeping."}, tokenize="python")
    assert out["Bleu_1"] > 0.5 and out["CIDEr"] >= 0 and out["tokenizer"] == "python"
    same = captioning.caption_scores(refs, {"1": "A dog runs.", "2": "Two cats sleep."}, tokenize="python")
    assert same["Bleu_3"] == pytest.approx(1.0, abs=1e-6) and same["ROUGE_L"] == pytest.approx(1.0)
    assert same["Bleu_4"] == pytest.approx(1e-6 ** 0.25, rel=1e-3)  # 3-word captions: no 4-gram at all


# --------------------------------------------------------------------------------------------------- exact
def test_exact_and_gqa_matching():
    assert exact.gqa_match("Yes.", "yes") and exact.gqa_match("left..", "left")
    assert not exact.gqa_match("on the left", "left")
    assert exact.exact_match(" A7K2 \n", "A7K2") and not exact.exact_match("a7k2", "A7K2")
    assert exact.relaxed_match("The Red  Circle.", "the red circle")
