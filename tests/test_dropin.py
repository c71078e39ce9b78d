"""Drop-in loading: a light import, and SentenceTransformer("ume-r1...") built as UME-R1 whatever the import order."""

from __future__ import annotations

import os
import subprocess
import sys

from sentence_transformers import SentenceTransformer
from sentence_transformers.base.modules import Normalize

from ume_plugins.checkpoints import is_ume_r1_model

HEAVY = ("torch", "transformers", "sentence_transformers")


def run_python(code: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)


def test_importing_ume_plugins_alone_imports_no_host_then_hooks_it_on_import(tiny_path):
    code = (
        "import importlib.util, sys\n"
        "import ume_plugins\n"
        f"print(sorted(name for name in {HEAVY!r} if name in sys.modules))\n"
        "assert importlib.util.find_spec('sentence_transformers')  # an availability check imports nothing\n"
        "from sentence_transformers import SentenceTransformer\n"
        "print(type(SentenceTransformer('ume-r1-tiny', device='cpu')).__name__)\n"
    )
    result = run_python(code)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.split("\n")[:2] == ["[]", "UMESentenceTransformer"]


def test_importing_ume_plugins_after_the_host_hooks_it_at_once(tiny_path):
    code = (
        "from sentence_transformers import SentenceTransformer\n"
        "import ume_plugins\n"
        "print(type(SentenceTransformer('ume-r1-tiny', device='cpu')).__name__)\n"
    )
    result = run_python(code)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip() == "UMESentenceTransformer"


def test_other_models_are_left_to_the_host(tmp_path):
    assert type(SentenceTransformer(modules=[Normalize()], device="cpu")) is SentenceTransformer
    assert not is_ume_r1_model("all-MiniLM-L6-v2")  # a bare name: never looked up
    assert not is_ume_r1_model(str(tmp_path))  # a folder that is no model at all
