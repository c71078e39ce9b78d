"""The README snippet and the example run as written, on the tiny random checkpoint."""

from __future__ import annotations

from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_snippet_runs_from_the_repository_root(run_readme_snippet):
    namespace = run_readme_snippet(README)
    hits = namespace["retriever"].image_to_image_retrieve("examples/data/red_circle.png")
    assert len(hits) == 1 and hits[0].node.metadata["file_name"] in {"red_circle.png", "blue_square.png"}


def test_example_runs(run_example):
    out = run_example("llama_index_retrieval.py", "--device", "cpu")
    assert "RANDOM weights" in out
    assert "text_to_image_retrieve('a red circle'):" in out and "image_to_image_retrieve(red_circle.png):" in out
