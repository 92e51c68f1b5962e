"""Grounding boxes: CogVLM [[x0,y0,x1,y1]] and MiniGPT-v2 <p>..</p>{<..>} parsing, drawing, round trip."""

from __future__ import annotations

import pytest
from PIL import Image

from vlmkit.generation import Box, draw_boxes, format_cogvlm_box, parse_boxes

W, H = 200, 100


def test_cogvlm_single_box_and_phrase():
    boxes = parse_boxes("The red square[[100,200,300,400]] is on the left.", W, H)
    assert boxes == [Box("The red square", 20.0, 20.0, 60.0, 40.0)]


def test_cogvlm_several_boxes_with_semicolons_and_clauses():
    text = "There are two dogs: a brown dog [[000,000,500,500;500,500,999,999]], and a cat [[100,100,200,200]]."
    boxes = parse_boxes(text, W, H)
    assert [b.phrase for b in boxes] == ["a brown dog", "a brown dog", "and a cat"]
    assert boxes[0].xyxy == (0.0, 0.0, 100.0, 50.0)
    assert boxes[1].xyxy == pytest.approx((100.0, 50.0, 199.8, 99.9))
    assert boxes[2].xyxy == pytest.approx((20.0, 10.0, 40.0, 20.0))


def test_minigptv2_boxes_with_delim():
    text = "<p>a red square</p> {<10><20><30><40>}<delim>{<50><50><100><100>} and <p>sky</p>{<0><0><100><10>}"
    boxes = parse_boxes(text, W, H)
    assert [b.phrase for b in boxes] == ["a red square", "a red square", "sky"]
    assert boxes[0].xyxy == (20.0, 20.0, 60.0, 40.0)
    assert boxes[1].xyxy == (100.0, 50.0, 200.0, 100.0)
    assert boxes[2].xyxy == (0.0, 0.0, 200.0, 10.0)
    assert parse_boxes("{<10><10><20><20>}", W, H) == [Box("", 20.0, 10.0, 40.0, 20.0)]


def test_both_formats_in_text_order():
    boxes = parse_boxes("<p>b</p>{<0><0><50><50>} then a [[500,500,999,999]]", W, H)
    assert [b.phrase for b in boxes] == ["b", "then a"]


@pytest.mark.parametrize("text", [
    "[[1,2,3]]", "[[a,b,c,d]]", "[[]]", "[[100,200,300,400", "[[1.5,2,3,4]]", "[[100,100,100,400]]",
    "<p>x</p>{<1><2><3>}", "<p>x</p>{<1><2><3><x>}", "{}", "<p>x</p>", "", "[[[[", "{<1><2><3><4>",
])
def test_malformed_boxes_are_ignored(text):
    assert parse_boxes(text, W, H) == []


def test_malformed_box_beside_good_ones():
    boxes = parse_boxes("a [[1,2,3;100,100,200,200]] b {<5><5>}<delim>{<10><10><20><20>}", W, H)
    assert [b.xyxy for b in boxes] == [(20.0, 10.0, 40.0, 20.0), (20.0, 10.0, 40.0, 20.0)]


def test_swapped_corners_are_ordered_and_boxes_clamped():
    assert parse_boxes("x [[300,400,100,200]]", W, H)[0].xyxy == (20.0, 20.0, 60.0, 40.0)
    assert parse_boxes("{<30><40><10><20>}", W, H)[0].xyxy == (20.0, 20.0, 60.0, 40.0)
    assert parse_boxes("x [[-50,500,1500,2000]]", W, H)[0].xyxy == (0.0, 50.0, 200.0, 100.0)
    assert parse_boxes("{<90><90><150><150>}", W, H)[0].xyxy == (180.0, 90.0, 200.0, 100.0)
    assert parse_boxes("x [[1200,100,1500,200]]", W, H) == []  # entirely outside: nothing left
    assert parse_boxes("x [[100,100,200,200]]", 0, H) == []


def test_format_cogvlm_box_round_trip():
    assert format_cogvlm_box((20, 20, 60, 40), W, H) == "[[100,200,300,400]]"
    assert format_cogvlm_box((0, 0, W, H), W, H) == "[[000,000,999,999]]"
    assert format_cogvlm_box(Box("x", 60, 40, 20, 20), W, H) == "[[100,200,300,400]]"
    for box in [(13.0, 7.5, 151.2, 88.8), (0.0, 0.0, 3.0, 2.0), (120.4, 33.3, 199.0, 99.0)]:
        parsed = parse_boxes("it " + format_cogvlm_box(box, W, H), W, H)[0]
        assert parsed.xyxy == pytest.approx(box, abs=max(W, H) / 1000)


def test_draw_boxes_returns_a_new_image_of_the_same_size():
    image = Image.new("RGB", (W, H), "white")
    boxes = parse_boxes("a red square [[100,200,300,400]] and {<50><50><90><90>}", W, H)
    drawn = draw_boxes(image, boxes)
    assert drawn is not image and drawn.size == image.size and drawn.mode == "RGB"
    assert image.getcolors() == [(W * H, (255, 255, 255))]  # the input is untouched
    assert drawn.getpixel((20, 30)) != (255, 255, 255)  # left edge of the first box
    gray = draw_boxes(Image.new("L", (W, H), 128), [Box("top", 0, 0, 50, 50)])
    assert gray.size == (W, H) and gray.mode == "RGB"
    assert draw_boxes(image, []).size == image.size
