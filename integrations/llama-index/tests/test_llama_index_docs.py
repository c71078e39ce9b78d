"""The README snippet and the example run as written, on the tiny random checkpoint."""

from __future__ import annotations

import re
import runpy
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]
README = ROOT / "integrations" / "llama-index" / "README.md"


def test_readme_snippet_runs_from_the_repository_root(monkeypatch):
    (snippet,) = re.findall(r"```python\n(.*?)```", README.read_text(encoding="utf-8"), re.S)
    assert 'device="cuda"' not in snippet  # the device is picked automatically
    assert snippet.count('"ume-r1"') == 1  # the one change: the offline checkpoint instead of the hub's
    monkeypatch.chdir(ROOT)
    namespace: dict = {}
    exec(compile(snippet.replace('"ume-r1"', '"ume-r1-tiny"'), str(README), "exec"), namespace)
    hits = namespace["retriever"].image_to_image_retrieve("examples/data/red_circle.png")
    assert len(hits) == 1 and hits[0].node.metadata["file_name"] in {"red_circle.png", "blue_square.png"}


def test_example_runs(monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", ["llama_index_retrieval.py", "--device", "cpu"])
    runpy.run_path(str(ROOT / "examples" / "llama_index_retrieval.py"), run_name="__main__")
    out = capsys.readouterr().out
    assert "RANDOM weights" in out
    assert "text_to_image_retrieve('a red circle'):" in out and "image_to_image_retrieve(red_circle.png):" in out
