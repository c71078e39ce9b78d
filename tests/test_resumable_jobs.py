"""Resumable ``ume-plugins encode`` jobs: killed at any point, re-run, byte-identical output."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import gradient, solid
from tests.hostile import hostile_server
from ume_plugins import chunks, jobs
from ume_plugins.cli import main
from ume_plugins.jobs import Chunk, JobFolder, JobMismatchError

ROOT = Path(__file__).resolve().parents[1]
ARTEFACTS = ("embeddings.npy", "records.jsonl", "errors.jsonl", "run.json")


def encode_args(source: Path, output: Path, *extra: str) -> list[str]:
    return [
        "encode",
        str(source),
        "--model",
        "ume-r1-tiny",
        "--output",
        str(output),
        "--mode",
        "discriminative",
        "--no-progress",
        *extra,
    ]


def artefacts(output: Path) -> dict[str, bytes]:
    return {name: (output / name).read_bytes() for name in ARTEFACTS}


def finished_cleanly(output: Path) -> bool:
    return not (output / "chunks").exists() and not [path for path in output.iterdir() if path.name.startswith(".")]


@pytest.fixture
def computed_chunks(monkeypatch):
    """Indices of the first input of each chunk the CLI computes."""
    starts: list[int] = []
    encode_chunk = chunks.encode_chunk

    def spy(model, records, start, *args, **kwargs):
        starts.append(start)
        return encode_chunk(model, records, start, *args, **kwargs)

    monkeypatch.setattr(chunks, "encode_chunk", spy)
    return starts


@pytest.fixture(scope="module")
def small_job(tmp_path_factory):
    """Five inputs (one of them bad) for jobs of three 2-input chunks."""
    folder = tmp_path_factory.mktemp("small-job")
    gradient((84, 56)).save(folder / "photo.png")
    rows = [
        {"id": "fox", "text": "a red fox"},
        {"id": "photo", "image": "photo.png"},
        {"id": "gone", "image": "missing.png"},
        {"id": "fused", "text": "a photo", "image": "photo.png"},
        {"id": "frames", "video": ["photo.png", "photo.png", "photo.png"]},
    ]
    (folder / "inputs.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    return folder / "inputs.jsonl"


@pytest.fixture(scope="module")
def reference(small_job, tmp_path_factory):
    output = tmp_path_factory.mktemp("reference") / "out"
    assert main(encode_args(small_job, output, "--chunk-size", "2")) == 0
    return artefacts(output)


def test_a_job_killed_mid_run_resumes_to_byte_identical_output(tmp_path, computed_chunks):
    folder = tmp_path / "data"
    folder.mkdir()
    solid((200, 30, 30), (56, 56)).save(folder / "photo.png")
    with hostile_server(folder) as server:
        rows = [
            {"id": "text", "text": "a red square"},
            {"id": "image", "image": "photo.png"},
            {"id": "gated", "image": f"{server.base_url}/gate.png"},  # held until the job is killed
            {"id": "gone", "image": "missing.png"},
            {"id": "fused", "text": "a square", "image": "photo.png"},
            {"id": "frames", "video": ["photo.png", "photo.png", "photo.png"]},
        ]
        (folder / "inputs.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
        args = encode_args(folder / "inputs.jsonl", tmp_path / "out", "--chunk-size", "1")
        with (tmp_path / "stderr.txt").open("wb") as stderr:
            job = subprocess.Popen([sys.executable, "-m", "ume_plugins.cli", *args], cwd=ROOT, stderr=stderr)
            try:
                # Wait (bounded) until the job is stuck fetching its third input, in its third chunk.
                deadline = time.monotonic() + 300
                while not server.arrived.wait(timeout=0.5) and job.poll() is None and time.monotonic() < deadline:
                    pass
            finally:
                job.send_signal(signal.SIGKILL)
                job.wait()
        assert server.arrived.is_set(), (tmp_path / "stderr.txt").read_text()
        chunks = sorted(path.name for path in (tmp_path / "out" / "chunks").iterdir() if not path.name.startswith("."))
        assert chunks == ["000000.json", "000001.json"]
        assert not any((tmp_path / "out" / name).exists() for name in ARTEFACTS)

        server.release.set()
        assert main(args) == 0
        assert computed_chunks == [2, 3, 4, 5]
        assert main(encode_args(folder / "inputs.jsonl", tmp_path / "uninterrupted", "--chunk-size", "1")) == 0
    assert artefacts(tmp_path / "out") == artefacts(tmp_path / "uninterrupted")
    assert finished_cleanly(tmp_path / "out")
    errors = [json.loads(line) for line in (tmp_path / "out" / "errors.jsonl").open()]
    assert [(error["index"], error["id"]) for error in errors] == [(3, "gone")]


@pytest.fixture(scope="module")
def discriminative_model():
    import ume_plugins

    return ume_plugins.load("ume-r1-tiny", mode="discriminative")


class Killed(BaseException):
    """Stands for the process dying: nothing may catch it."""


def test_a_job_killed_before_any_file_lands_resumes_to_byte_identical_output(
    small_job, reference, tmp_path, monkeypatch, computed_chunks, discriminative_model
):
    # The same model every run loads, loaded once: this test is about the files, run 17 times.
    monkeypatch.setattr("ume_plugins.loading.load", lambda *args, **kwargs: discriminative_model)
    commit = jobs._commit
    landed: list[str] = []
    monkeypatch.setattr(jobs, "_commit", lambda temporary, path: (landed.append(path.name), commit(temporary, path)))
    assert main(encode_args(small_job, tmp_path / "count", "--chunk-size", "2")) == 0
    # The manifest, three chunks, then the artefacts (run.json last): every point a crash can hit.
    assert landed[:4] == ["manifest.json", "000000.json", "000001.json", "000002.json"]
    assert landed[-1] == "run.json" and sorted(landed[4:-1]) == ["embeddings.npy", "errors.jsonl", "records.jsonl"]

    for crash_at in range(len(landed)):
        calls = iter(range(len(landed)))

        def dying(temporary, path, crash_at=crash_at, calls=calls):
            if next(calls) == crash_at:
                raise Killed  # the temporary file stays behind, complete or not, as after a SIGKILL
            commit(temporary, path)

        output = tmp_path / f"crash-{crash_at}"
        monkeypatch.setattr(jobs, "_commit", dying)
        with pytest.raises(Killed):
            main(encode_args(small_job, output, "--chunk-size", "2"))
        monkeypatch.setattr(jobs, "_commit", commit)
        computed_chunks.clear()
        assert main(encode_args(small_job, output, "--chunk-size", "2")) == 0
        chunks_done_before = min(max(crash_at - 1, 0), 3)
        assert computed_chunks == [2 * chunk for chunk in range(chunks_done_before, 3)]
        assert artefacts(output) == reference, crash_at
        assert finished_cleanly(output)


def test_a_finished_job_is_not_run_again(small_job, reference, tmp_path, capsys, computed_chunks, monkeypatch):
    output = tmp_path / "out"
    assert main(encode_args(small_job, output, "--chunk-size", "2")) == 0

    def no_loading(*args, **kwargs):
        raise AssertionError("a finished job must be recognised before any model loads")

    monkeypatch.setattr("ume_plugins.loading.load", no_loading)
    assert main(encode_args(small_job, output, "--chunk-size", "2")) == 0
    assert "already holds this job's finished output" in capsys.readouterr().out
    assert computed_chunks == [0, 2, 4] and artefacts(output) == reference


@pytest.mark.parametrize(
    ("changed", "differs"),
    [
        (["--chunk-size", "3"], "chunk_size"),
        (["--chunk-size", "2", "--instruction", "Find it:"], "instruction"),
        (["--chunk-size", "2", "--max-length", "500"], "settings.max_length"),
    ],
)
def test_a_folder_made_by_another_command_is_refused(
    small_job, reference, tmp_path, capsys, changed, differs, monkeypatch
):
    output = tmp_path / "out"
    assert main(encode_args(small_job, output, "--chunk-size", "2")) == 0
    monkeypatch.setattr("ume_plugins.loading.load", lambda *args, **kwargs: pytest.fail("refused after loading"))
    assert main(encode_args(small_job, output, *changed)) == 2
    assert f"holds a different encode job (differs in: {differs})" in capsys.readouterr().err
    assert artefacts(output) == reference


def test_a_folder_holding_other_files_is_refused(small_job, tmp_path, capsys):
    (tmp_path / "notes.txt").write_text("mine")
    assert main(encode_args(small_job, tmp_path)) == 2
    assert "is not empty and holds no encode job" in capsys.readouterr().err
    assert sorted(path.name for path in tmp_path.iterdir()) == ["notes.txt"]


def test_embeddings_npy_is_what_numpy_save_writes(tmp_path):
    vectors = np.arange(12, dtype=np.float32).reshape(3, 4)
    folder = JobFolder(tmp_path / "out", {"job": 1}, chunk_count=2)
    folder.claim({"dim": 4})
    folder.save_chunk(0, Chunk([{"id": "a"}, {"id": "b"}], [], vectors[:2]))
    folder.save_chunk(1, Chunk([{"id": "c"}], [{"index": 3, "id": "d", "error": "bad"}], vectors[2:]))
    folder.assemble({"model": "m"})
    expected = io.BytesIO()
    np.save(expected, vectors)
    assert (tmp_path / "out" / "embeddings.npy").read_bytes() == expected.getvalue()
    assert json.loads((tmp_path / "out" / "run.json").read_text()) == {"model": "m", "count": 3, "skipped": 1}


def test_a_job_where_every_input_fails_still_writes_empty_artefacts(tmp_path):
    folder = JobFolder(tmp_path / "out", {"job": 1}, chunk_count=1)
    folder.claim({"dim": 8})
    folder.save_chunk(0, Chunk([], [{"index": 0, "id": "a", "error": "bad"}], np.zeros((0, 8), np.float32)))
    folder.assemble({})
    assert np.load(tmp_path / "out" / "embeddings.npy").shape == (0, 8)
    assert (tmp_path / "out" / "records.jsonl").read_bytes() == b""


def test_leftover_temporary_files_do_not_make_a_folder_foreign(tmp_path):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / f".manifest.json.{os.getpid() + 1}.tmp").write_bytes(b"{half a manif")
    folder = JobFolder(tmp_path / "out", {"job": 1}, chunk_count=1)
    folder.claim({"dim": 8})
    assert folder.finished_chunks() == set()
    with pytest.raises(JobMismatchError, match="differs in: job"):
        JobFolder(tmp_path / "out", {"job": 2}, chunk_count=1)


def test_chunks_computed_on_other_hardware_are_refused(tmp_path):
    # Another CPU thread count (or GPU model) reduces in another order: the bytes would differ.
    facts = {"dim": 2, "device": "cpu", "dtype": "torch.float32", "threads": 2}
    folder = JobFolder(tmp_path / "out", {"job": 1}, chunk_count=2)
    folder.claim(facts)
    folder.save_chunk(0, Chunk([{"id": "a"}], [], np.ones((1, 2), np.float32)))
    resumed = JobFolder(tmp_path / "out", {"job": 1}, chunk_count=2)
    assert resumed.finished_chunks() == {0}
    with pytest.raises(JobMismatchError, match="differs in: threads"):
        resumed.claim({**facts, "threads": 1})
