"""Encode jobs on Ray: two CPU actors of a local cluster write the local job's bytes, even after a SIGKILL."""

from __future__ import annotations

import json
import logging
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import ray
import torch

from tests.conftest import solid
from tests.hostile import hostile_server
from ume_plugins.cli import main
from ume_plugins.distributed import RAY_REQUIREMENT, encode_dataset

ROOT = Path(__file__).resolve().parents[1]
FILES = ("embeddings.npy", "records.jsonl", "errors.jsonl", "run.json", "manifest.json")
CHUNKS = 6
SETTINGS = {"model": "ume-r1-tiny", "mode": "generative", "max_new_tokens": 8, "chunk_size": 1}


def cli_args(source: Path, output: Path, *extra: str) -> list[str]:
    return [
        "encode",
        str(source),
        "--model",
        SETTINGS["model"],
        "--output",
        str(output),
        "--mode",
        SETTINGS["mode"],
        "--max-new-tokens",
        str(SETTINGS["max_new_tokens"]),
        "--chunk-size",
        str(SETTINGS["chunk_size"]),
        "--no-progress",
        *extra,
    ]


def files(output: Path) -> dict[str, bytes]:
    return {name: (output / name).read_bytes() for name in FILES}


def landed(output: Path) -> set[int]:
    folder = output / "chunks"
    return {int(path.stem) for path in folder.glob("*.json")} if folder.is_dir() else set()


@pytest.fixture(scope="module")
def cluster():
    """One local two-CPU cluster for the module (its start-up is most of these tests' time)."""
    ray.init(num_cpus=2, include_dashboard=False, logging_level=logging.WARNING)
    try:
        yield ray.get_runtime_context().gcs_address
    finally:
        ray.shutdown()


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """Six one-input chunks, one of them bad, the last fetched from a gate the tests can hold shut."""
    folder = tmp_path_factory.mktemp("ray-job")
    solid((200, 30, 30), (56, 56)).save(folder / "photo.png")
    with hostile_server(folder) as server:
        rows = [
            {"id": "text", "text": "a red square"},
            {"id": "image", "image": "photo.png"},
            {"id": "gone", "image": "missing.png"},
            {"id": "fused", "text": "a square", "image": "photo.png"},
            {"id": "frames", "video": ["photo.png", "photo.png", "photo.png"]},
            {"id": "gated", "image": f"{server.base_url}/gate.png"},
        ]
        (folder / "inputs.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
        yield folder / "inputs.jsonl", server


@pytest.fixture(scope="module")
def local_job(served, tmp_path_factory):
    """The local single-process job's files, computed with one thread as each one-CPU actor is."""
    source, server = served
    server.release.set()
    output = tmp_path_factory.mktemp("local") / "out"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert main(cli_args(source, output)) == 0
    finally:
        torch.set_num_threads(threads)
    return files(output)


def test_two_cpu_actors_write_the_bytes_of_the_local_job(cluster, served, local_job, tmp_path):
    source, server = served
    server.release.set()
    result = encode_dataset(source, tmp_path / "out", **SETTINGS, actors=2, progress=False)
    assert result.computed == tuple(range(CHUNKS)) and (result.count, result.skipped) == (5, 1)
    assert files(tmp_path / "out") == local_job  # the manifest too: either engine can resume the job
    (error,) = map(json.loads, (tmp_path / "out" / "errors.jsonl").open())
    assert (error["index"], error["id"]) == (2, "gone") and "missing.png" in error["error"]


def test_a_killed_driver_resumes_to_the_bytes_of_the_local_job(cluster, served, local_job, tmp_path):
    source, server = served
    server.release.clear()
    server.arrived.clear()
    output = tmp_path / "out"
    command = [sys.executable, "-m", "ume_plugins.cli", *cli_args(source, output, "--ray", cluster, "--actors", "2")]
    with (tmp_path / "driver.log").open("wb") as log:
        driver = subprocess.Popen(command, cwd=ROOT, stdout=log, stderr=log)
        try:
            # Wait (bounded) until an actor is stuck fetching the last input, then give the driver a
            # moment to save the chunks already computed: well inside the 10 s URL timeout that
            # would let the gated chunk finish.
            deadline = time.monotonic() + 300
            while not server.arrived.wait(timeout=0.5) and driver.poll() is None and time.monotonic() < deadline:
                pass
            settle = time.monotonic() + 5
            while server.arrived.is_set() and len(landed(output)) < CHUNKS - 1 and time.monotonic() < settle:
                time.sleep(0.1)
        finally:
            driver.send_signal(signal.SIGKILL)
            driver.wait()
    assert server.arrived.is_set(), (tmp_path / "driver.log").read_text()
    before = landed(output)
    assert before and CHUNKS - 1 not in before
    assert not (output / "run.json").exists()

    server.release.set()
    result = encode_dataset(source, output, **SETTINGS, actors=2, progress=False)
    assert result.computed == tuple(sorted(set(range(CHUNKS)) - before))
    assert files(output) == local_job


def test_without_ray_the_cli_says_the_pip_line(tmp_path, monkeypatch, capsys):
    source = tmp_path / "in.jsonl"
    source.write_text('{"text": "hi"}\n')
    monkeypatch.setitem(sys.modules, "ray", None)  # what an environment without Ray imports
    assert main(cli_args(source, tmp_path / "out", "--ray")) == 2
    assert capsys.readouterr().err.splitlines()[-1] == f"error: running on Ray needs Ray Data: {RAY_REQUIREMENT}"


def test_a_device_is_refused_for_ray_actors(tmp_path, capsys):
    with pytest.raises(SystemExit) as exited:
        main(cli_args(tmp_path / "in.jsonl", tmp_path / "out", "--ray", "--device", "cuda:1"))
    assert exited.value.code == 2
    assert "--device applies to local runs" in capsys.readouterr().err
