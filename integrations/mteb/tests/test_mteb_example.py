"""examples/mteb_local_retrieval.py: its results outlive the script."""

from __future__ import annotations

from pathlib import Path

import mteb


def test_example_results_survive_the_script(tmp_path, monkeypatch, run_example, tiny_path):
    monkeypatch.chdir(tmp_path)
    out = run_example("mteb_local_retrieval.py")
    printed = Path(out.split("results, in mteb's layout: ")[1].strip())
    assert printed.is_file() and printed.is_relative_to(Path("runs/mteb-example"))
    hit_rate = mteb.TaskResult.from_disk(printed).scores["test"][0]["hit_rate_at_1"]
    assert f"hit@1 {hit_rate:.3f}" in out and hit_rate == 1.0  # each query has an identical twin
