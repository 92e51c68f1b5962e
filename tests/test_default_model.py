"""A real check of the shipped default model: 20 fixed held-out questions, asked through `vlmkit eval`, and
`vlmkit ask --json` end to end on a grounding question, both without `--model`.

The seeds (31337-31339) are not used by any training config, so these samples were never trained on."""

from __future__ import annotations

import json

from vlmkit.cli.main import main
from vlmkit.constants import IMAGE_TOKEN
from vlmkit.data.synthetic import generate

# task, questions, generation seed: 8 shapes questions (count / colour / position), 6 boxes, 6 captchas
CHECK = [("shapes", 8, 31337), ("grounding", 6, 31338), ("captcha", 6, 31339)]


def test_default_model_answers_18_of_20_held_out_questions(tmp_path, capsys):
    correct = {}
    for task, n, seed in CHECK:
        out = tmp_path / task
        argv = ["eval", "--task", task, "--limit", str(n), "--split", str(seed), "--out", str(out), "--no-progress"]
        assert main(argv) == 0, capsys.readouterr().err
        results = json.loads((out / "results.json").read_text())
        assert results["n_scored"] == n
        percent = results["metrics"][results["main_metric"]]
        correct[task] = round(percent * n / 100)
    asked = {task: n for task, n, _ in CHECK}
    assert sum(correct.values()) >= 18, f"the shipped weights answered {correct} of {asked}"


def test_ask_json_on_the_default_model_points_at_the_named_object(tmp_path, capsys):
    sample = generate("shapes", 1, 31338, tasks="grounding", min_shapes=2)[0]
    image = tmp_path / "scene.png"
    sample.images[0].save(image)
    question = sample.messages[0]["content"].replace(IMAGE_TOKEN, "").strip()  # CogVLM's grounding phrasing
    assert main(["ask", "--image", str(image), "--json", question]) == 0
    answer = json.loads(capsys.readouterr().out)
    assert answer["boxes"], answer
    box = answer["boxes"][0]
    x0, y0, x1, y1 = sample.meta["bbox"]
    cx, cy = (box["x0"] + box["x1"]) / 2, (box["y0"] + box["y1"]) / 2
    assert x0 <= cx <= x1 and y0 <= cy <= y1, (answer, sample.meta["shapes"])
