"""examples/mteb_local_retrieval.py: its results outlive the script."""

from __future__ import annotations

import runpy
import sys
from pathlib import Path

import mteb

EXAMPLE = Path(__file__).resolve().parents[3] / "examples" / "mteb_local_retrieval.py"


def test_example_results_survive_the_script(tmp_path, monkeypatch, capsys, tiny_path):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", [EXAMPLE.name])
    runpy.run_path(str(EXAMPLE), run_name="__main__")
    out = capsys.readouterr().out
    printed = Path(out.split("results, in mteb's layout: ")[1].strip())
    assert printed.is_file() and printed.is_relative_to(Path("runs/mteb-example"))
    hit_rate = mteb.TaskResult.from_disk(printed).scores["test"][0]["hit_rate_at_1"]
    assert f"hit@1 {hit_rate:.3f}" in out and hit_rate == 1.0  # each query has an identical twin
