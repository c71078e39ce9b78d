"""The README snippet and the example run as written, on the tiny random checkpoint."""

from __future__ import annotations

from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_snippet_runs_from_the_repository_root(run_readme_snippet):
    namespace = run_readme_snippet(README)
    assert len(namespace["store"].store) == 2


def test_example_runs(run_example):
    out = run_example("langchain_retrieval.py", "--device", "cpu")
    assert "RANDOM weights" in out
    assert "Text query 'a red circle':" in out and "Image query red_circle.png:" in out
