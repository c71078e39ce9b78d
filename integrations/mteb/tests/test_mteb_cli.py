"""The ``ume-mteb`` console script as a user runs it: what it prints, what it keeps quiet."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from mteb.mocks import ALL_MOCK_TASK_TEST_GRID

UME_MTEB = Path(sys.executable).with_name("ume-mteb")
TINY = ["--model", "ume-r1-tiny", "--mode", "discriminative", "--device", "cpu"]


def ume_mteb(*args: str) -> subprocess.CompletedProcess:
    assert UME_MTEB.is_file(), f"{UME_MTEB} is missing: install integrations/mteb (bash .ci/setup)"
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    return subprocess.run([str(UME_MTEB), *args], capture_output=True, text=True, env=env, timeout=900)


def random_weights_warnings(stderr: str) -> list[str]:
    """ume-mteb's own line (the core's load warning says the same of the checkpoint, not of the results)."""
    return [line for line in stderr.splitlines() if line.startswith("WARNING ume_mteb") and "RANDOM weights" in line]


def mock_table(markdown: str) -> dict[str, str]:
    """Task name to its Pass cell, from the first table of ``MockRunResults.to_markdown``."""
    lines = markdown.splitlines()
    start = lines.index("| Task | Modality | Pass | Reason |") + 2
    rows = {}
    for line in lines[start:]:
        if not line.startswith("|"):
            break
        name, _, status, _ = (cell.strip() for cell in line.strip("|").split("|", 3))
        rows[name] = status
    return rows


def test_mock_run_passes_quietly_and_says_the_weights_are_random(tiny_path):
    run = ume_mteb("mock-run", *TINY)
    assert run.returncode == 0, run.stderr[-3000:]
    # mteb's INFO logging (about 800 lines) stays off without -v.
    assert not [line for line in (run.stdout + run.stderr).splitlines() if line.startswith("INFO")]
    (warning,) = random_weights_warnings(run.stderr)
    assert f"ume-plugins/{tiny_path.name}" in warning  # the name the results are reported under
    assert f"`ume-plugins/{tiny_path.name}`" in run.stdout
    # Every mock task compatible with text, image and video ran and passed, video ones included.
    statuses = mock_table(run.stdout)
    modalities = {task.metadata.name: set(task.metadata.modalities) for task in ALL_MOCK_TASK_TEST_GRID}
    compatible = {name for name, task_modalities in modalities.items() if task_modalities <= {"text", "image", "video"}}
    assert statuses == dict.fromkeys(compatible, "✓")
    for modality in ("text", "image", "video"):
        assert any(modality in modalities[name] for name in statuses), f"no {modality} mock task ran"


def test_run_verbose_shows_mteb_logging_and_the_warning(tmp_path, files, tiny_path):
    task = tmp_path / "TinyTextTask"
    task.mkdir()
    files.jsonl(task / "queries.jsonl", [{"id": "q0", "text": "a red fox"}, {"id": "q1", "text": "a blue car"}])
    files.jsonl(task / "corpus.jsonl", [{"id": "d0", "text": "a red fox"}, {"id": "d1", "text": "a blue car"}])
    files.jsonl(task / "qrels.jsonl", [{"query_id": "q0", "corpus_id": "d0"}, {"query_id": "q1", "corpus_id": "d1"}])
    run = ume_mteb("run", *TINY, "--local", str(task), "--output", str(tmp_path / "cache"), "-v")
    assert run.returncode == 0, run.stderr[-3000:]
    assert any(line.startswith("INFO mteb.") for line in run.stderr.splitlines())
    assert len(random_weights_warnings(run.stderr)) == 1
    assert run.stdout.startswith("TinyTextTask: ")


def test_help_imports_neither_mteb_nor_torch():
    # The modes come from the core's settings (light); nothing heavy may load with them.
    heavy = ("mteb", "torch", "transformers", "sentence_transformers", "numpy", "PIL")
    code = (
        "import sys\n"
        "from ume_mteb.cli import main\n"
        "try:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
        f"print(sorted(name for name in {heavy!r} if name in sys.modules))"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    assert run.stdout.splitlines()[-1] == "[]"
    assert "mock-run" in run.stdout
