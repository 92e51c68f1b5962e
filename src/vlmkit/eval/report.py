"""The evaluation report: `results.json` (everything, full precision) and `results.md` (tables, rounded).

This module owns the layout of both files. Numbers in results.json are unrounded; results.md shows
percentages with 2 decimals (as the official scripts print them) and fractions with 4.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ..checkpoint import write_json

RESULTS_JSON, RESULTS_MD = "results.json", "results.md"


def fmt(value: Any, unit: str = "percent") -> str:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return str(value)
    if isinstance(value, int):
        return str(value)
    return f"{value:.2f}" if unit == "percent" else f"{value:.4f}"


def _table(header: tuple[str, str], rows: Mapping[str, Any], unit: str, bold: str | None = None) -> list[str]:
    lines = [f"| {header[0]} | {header[1]} |", "|---|---:|"]
    for k, v in rows.items():
        name = f"**{k}**" if k == bold else k
        lines.append(f"| {name} | {fmt(v, _unit_of(k, unit))} |")
    return lines


def _unit_of(metric: str, unit: str) -> str:
    return "fraction" if metric == "mean_iou" else ("percent" if unit == "percent" else "fraction")


def markdown(results: Mapping[str, Any]) -> str:
    """results.md: a header, the metrics table, one table per breakdown."""
    unit = str(results.get("unit", "percent"))
    lines = [f"# vlmkit eval: {results['task']}", "", str(results.get("description", "")), ""]
    facts = [f"items scored: {results.get('n_scored', 0)} of {results.get('n_items', 0)}"]
    if results.get("model"):
        facts.append(f"model: `{results['model']}`")
    if "prompt_template" in results:
        facts.append(f"prompt: `{results['prompt_template']!r}`")
    if results.get("tokenizer"):
        facts.append(f"tokenizer: {results['tokenizer']}")
    facts.append(f"unit: {unit}")
    lines += [f"- {f}" for f in facts] + [""]
    if "metrics" not in results:
        return "\n".join(lines + [str(results.get("note", "not scored")), ""])
    lines += _table(("metric", "value"), results["metrics"], unit, bold=results.get("main_metric")) + [""]
    for name, rows in results.get("breakdowns", {}).items():
        if rows:
            lines += [f"## by {name}", ""] + _table((name, results.get("main_metric", "value")), rows, unit) + [""]
    return "\n".join(lines)


def write_report(out_dir: Path, results: Mapping[str, Any]) -> None:
    """Write results.json and results.md atomically into `out_dir`."""
    out_dir.mkdir(parents=True, exist_ok=True)
    write_json(out_dir / RESULTS_JSON, dict(results))
    tmp = out_dir / f".{RESULTS_MD}.tmp-{os.getpid()}"
    tmp.write_text(markdown(results), encoding="utf-8")
    os.replace(tmp, out_dir / RESULTS_MD)
