"""`vlmkit demo` end to end on a (random) tiny model directory: table, scores, the boxes image."""

from __future__ import annotations

import vlmkit
from vlmkit.cli.main import main


def test_demo_runs_on_a_model_dir(tmp_path, capsys):
    model_dir = vlmkit.save(*vlmkit.build("llava-tiny"), tmp_path / "m")
    rc = main(["demo", "--model", str(model_dir), "--n", "12", "--out", str(tmp_path / "out")])
    out = capsys.readouterr().out
    assert rc == 0
    assert "accuracy on 12 held-out samples" in out
    for task in ("count", "captcha", "grounding"):
        assert task in out
    assert (tmp_path / "out" / "grounding.png").is_file()


def test_demo_missing_model_is_one_line(tmp_path, capsys):
    rc = main(["demo", "--model", str(tmp_path / "absent")])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and "not found" in err
