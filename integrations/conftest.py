"""Shared by the integrations' tests: the READMEs' snippets and the examples, run as a reader runs them."""

from __future__ import annotations

import re
import runpy
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def run_readme_snippet(monkeypatch) -> Callable[[Path], dict]:
    """Run a README's one Python snippet from the repository root; return its namespace.

    The one change: the hub's ``"ume-r1"`` becomes the offline ``"ume-r1-tiny"``.
    """

    def run(readme: Path) -> dict:
        (snippet,) = re.findall(r"```python\n(.*?)```", readme.read_text(encoding="utf-8"), re.S)
        assert 'device="cuda"' not in snippet  # the device is picked automatically
        assert snippet.count('"ume-r1"') == 1
        monkeypatch.chdir(ROOT)
        namespace: dict = {}
        exec(compile(snippet.replace('"ume-r1"', '"ume-r1-tiny"'), str(readme), "exec"), namespace)
        return namespace

    return run


@pytest.fixture
def run_example(monkeypatch, capsys) -> Callable[..., str]:
    """Run ``examples/<name>`` with command-line arguments in this process; return its stdout."""

    def run(name: str, *args: str) -> str:
        monkeypatch.setattr(sys, "argv", [name, *args])
        runpy.run_path(str(ROOT / "examples" / name), run_name="__main__")
        return capsys.readouterr().out

    return run
