"""The README snippet and the example run as written, on the tiny random checkpoint."""

from __future__ import annotations

import re
import runpy
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]
README = ROOT / "integrations" / "langchain" / "README.md"


def test_readme_snippet_runs_from_the_repository_root(monkeypatch):
    (snippet,) = re.findall(r"```python\n(.*?)```", README.read_text(encoding="utf-8"), re.S)
    assert 'device="cuda"' not in snippet  # the device is picked automatically
    assert snippet.count('"ume-r1"') == 1  # the one change: the offline checkpoint instead of the hub's
    monkeypatch.chdir(ROOT)
    namespace: dict = {}
    exec(compile(snippet.replace('"ume-r1"', '"ume-r1-tiny"'), str(README), "exec"), namespace)
    assert len(namespace["store"].store) == 2


def test_example_runs(monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", ["langchain_retrieval.py", "--device", "cpu"])
    runpy.run_path(str(ROOT / "examples" / "langchain_retrieval.py"), run_name="__main__")
    out = capsys.readouterr().out
    assert "RANDOM weights" in out
    assert "Text query 'a red circle':" in out and "Image query red_circle.png:" in out
