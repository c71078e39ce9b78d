from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.conftest import gradient
from tests.hostile import CASES, MAX_URL_BYTES, URL_TIMEOUT, Case, closed_port_url, corpus_model, hostile_env
from ume_plugins.cli import main
from ume_plugins.records import read_records
from ume_plugins.sources import VIDEO_EXTENSIONS

EXAMPLES = Path(__file__).resolve().parents[1] / "examples" / "data"


def test_encode_jsonl_in_generative_mode_writes_vectors_and_reasoning(tmp_path, tiny_path, capsys):
    assert main(["encode", str(EXAMPLES / "inputs.jsonl"), "--model", "ume-r1-tiny", "--output", str(tmp_path)]) == 0
    err = capsys.readouterr().err
    assert err.count("RANDOM weights") == 1  # said once, not by both the command and the module
    assert "Loading weights" in err and "Encoding" in err  # transformers' bar and ours
    vectors = np.load(tmp_path / "embeddings.npy")
    records = [json.loads(line) for line in (tmp_path / "records.jsonl").read_text().splitlines()]
    assert vectors.shape == (5, 64) and vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    assert [record["id"] for record in records] == ["q-text", "d-image", "d-fused", "d-two-images", "d-video"]
    assert all("reasoning" in record and "gen_emb_forced" in record for record in records)
    assert json.loads((tmp_path / "run.json").read_text())["mode"] == "generative"


def test_encode_folder_in_discriminative_mode_matches_the_api(tmp_path, model):
    code = main(
        ["encode", str(EXAMPLES), "--model", "ume-r1-tiny", "--output", str(tmp_path), "--mode", "discriminative"]
    )
    assert code == 0
    ids = [json.loads(line)["id"] for line in (tmp_path / "records.jsonl").read_text().splitlines()]
    assert ids == ["blue_square.png", "caption.txt", "green_circle.png", "red_circle.png"]
    expected = model.encode([str(EXAMPLES / "blue_square.png")], mode="discriminative")
    np.testing.assert_allclose(np.load(tmp_path / "embeddings.npy")[:1], expected, atol=1e-6)


def test_a_malformed_jsonl_line_is_reported(tmp_path, capsys):
    source = tmp_path / "bad.jsonl"
    source.write_text('{"text": "ok"}\n{not json}\n')
    assert main(["encode", str(source), "--model", "ume-r1-tiny", "--output", str(tmp_path / "out")]) == 2
    assert f"{source}, line 2: invalid JSON" in capsys.readouterr().err


def test_build_tiny_writes_a_checkpoint(tmp_path):
    assert main(["build-tiny", str(tmp_path / "tiny"), "--seed", "3"]) == 0
    assert (tmp_path / "tiny" / "model.safetensors").is_file()


def test_a_malformed_or_non_utf8_jsonl_line_is_reported(tmp_path, capsys):
    source = tmp_path / "bad.jsonl"
    source.write_bytes(b'{"text": "ok"}\n{"text": "caf\xe9"}\n')
    assert main(["encode", str(source), "--model", "ume-r1-tiny", "--output", str(tmp_path / "out")]) == 2
    assert f"{source}, line 2: not valid UTF-8" in capsys.readouterr().err


def cli_line(case: Case, env) -> dict | None:
    """The corpus case as a JSONL object, or None when JSON cannot carry it."""
    raw = case.make(env)
    if isinstance(raw, (str, Path)):
        raw = str(raw)
        if case.group == "text":
            row = {"text": raw}
        else:
            row = {"video" if Path(raw).suffix in VIDEO_EXTENSIONS else "image": raw}
    elif isinstance(raw, dict):
        row = raw
    else:
        return None
    try:
        json.dumps(row)
    except TypeError:
        return None
    return {"id": case.name, **row}


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    with hostile_env(tmp_path_factory.mktemp("hostile")) as env:
        yield env


@pytest.fixture(scope="module")
def corpus():
    return corpus_model()


def test_the_cli_skips_and_records_each_bad_input_of_the_corpus_and_embeds_the_rest(tmp_path, env, corpus, caplog):
    lines = [(case, line) for case in CASES if (line := cli_line(case, env)) is not None]
    assert len(lines) >= 40
    source = tmp_path / "corpus.jsonl"
    source.write_text("".join(json.dumps(line) + "\n" for _, line in lines))
    corpus.save(str(tmp_path / "model"))  # the corpus settings travel with the model; its input policy does not
    output = tmp_path / "out"
    policy = ["--url-timeout", str(URL_TIMEOUT), "--max-url-bytes", str(MAX_URL_BYTES)]
    assert main(["encode", str(source), "--model", str(tmp_path / "model"), "--output", str(output), *policy]) == 0

    records = [json.loads(line)["id"] for line in (output / "records.jsonl").read_text().splitlines()]
    errors = [json.loads(line) for line in (output / "errors.jsonl").read_text().splitlines()]
    assert records == [case.name for case, _ in lines if case.embeds]
    assert [error["id"] for error in errors] == [case.name for case, _ in lines if not case.embeds]
    failing = [(index, case) for index, (case, _) in enumerate(lines) if not case.embeds]
    for error, (index, case) in zip(errors, failing, strict=True):
        assert error["index"] == index and case.outcome in error["error"], error
    expected = corpus.encode([case.make(env) for case, _ in lines if case.embeds])
    np.testing.assert_allclose(np.load(output / "embeddings.npy"), expected, atol=1e-5)
    summary = json.loads((output / "run.json").read_text())
    assert (summary["count"], summary["skipped"], summary["inputs"]) == (len(records), len(errors), len(lines))
    long_text = next(index for index, (case, _) in enumerate(lines) if case.name.startswith("very long text"))
    assert f"Input {long_text}: text of" in caplog.text  # warnings name the input's index in the job


def test_a_folder_job_records_unreadable_files_and_texts(tmp_path, capsys):
    (tmp_path / "data").mkdir()
    gradient((84, 56)).save(tmp_path / "data" / "good.png")
    (tmp_path / "data" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    (tmp_path / "data" / "latin1.txt").write_bytes("crème brûlée".encode("latin-1"))
    (tmp_path / "data" / "note.txt").write_text("a short note")
    code = main(
        ["encode", str(tmp_path / "data"), "--model", "ume-r1-tiny", "--output", str(tmp_path / "out")]
        + ["--mode", "discriminative", "--no-progress"]
    )
    assert code == 0
    errors = {row["id"]: row["error"] for row in map(json.loads, (tmp_path / "out" / "errors.jsonl").open())}
    assert errors.keys() == {"broken.png", "latin1.txt"}
    assert "cannot decode image" in errors["broken.png"] and "is not UTF-8 text" in errors["latin1.txt"]
    records = [json.loads(line)["id"] for line in (tmp_path / "out" / "records.jsonl").open()]
    assert records == ["good.png", "note.txt"]
    err = capsys.readouterr().err
    assert "Loading weights" not in err and "Encoding" not in err  # --no-progress hides every bar


def test_no_network_skips_url_inputs(tmp_path, http_server):
    base_url, folder = http_server
    gradient((84, 56)).save(folder / "remote.png")
    source = tmp_path / "urls.jsonl"
    source.write_text(json.dumps({"id": "remote", "image": f"{base_url}/remote.png"}) + '\n{"id": "t", "text": "x"}\n')
    code = main(
        ["encode", str(source), "--model", "ume-r1-tiny", "--output", str(tmp_path / "out")]
        + ["--mode", "discriminative", "--no-network", "--no-progress"]
    )
    assert code == 0
    (error,) = map(json.loads, (tmp_path / "out" / "errors.jsonl").open())
    assert error["id"] == "remote" and "network access is disabled" in error["error"]
    job = json.loads((tmp_path / "out" / "manifest.json").read_text())["job"]
    # The input policy is the job's (the caller's), never a model setting.
    assert job["allow_network"] is False and "allow_network" not in job.get("settings", {})


def test_mode_both_writes_the_discriminative_vectors_too(tmp_path, model, capsys):
    args = ["encode", str(EXAMPLES / "inputs.jsonl"), "--model", "ume-r1-tiny", "--output", str(tmp_path)]
    assert main([*args, "--mode", "both", "--max-new-tokens", "8", "--no-progress"]) == 0
    assert "discriminative vectors in disc_embeddings.npy" in capsys.readouterr().out
    generative, discriminative = np.load(tmp_path / "embeddings.npy"), np.load(tmp_path / "disc_embeddings.npy")
    assert generative.shape == discriminative.shape == (5, 64)
    raw = [raw for _, raw in read_records(EXAMPLES / "inputs.jsonl")]
    np.testing.assert_allclose(discriminative, model.encode(raw, mode="discriminative"), atol=1e-5)
    expected = model.encode(raw, mode="generative", generation_kwargs={"max_new_tokens": 8})
    np.testing.assert_allclose(generative, expected, atol=1e-5)
    assert not np.allclose(generative, discriminative, atol=1e-3)
    assert json.loads((tmp_path / "run.json").read_text())["mode"] == "both"


def test_a_missing_input_is_one_line_naming_it(tmp_path, capsys):
    code = main(["encode", str(tmp_path / "nonexist.jsonl"), "--model", "ume-r1-tiny", "--output", str(tmp_path / "o")])
    assert code == 2
    assert capsys.readouterr().err.splitlines()[-1] == f"error: {tmp_path / 'nonexist.jsonl'}: no such file or folder"
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize(
    ("option", "message"),
    [
        (["--device", "gpu"], "device 'gpu' is not a torch device (cpu, cuda, cuda:1, mps, ...)"),
        (["--model", "./no-such-model"], "model folder ./no-such-model does not exist"),
        (["--model", str(EXAMPLES / "inputs.jsonl")], "is a file: give an alias, a hub id or a checkpoint folder"),
    ],
    ids=["unknown device", "missing model folder", "model file"],
)
def test_a_bad_device_or_model_path_is_one_line(tmp_path, capsys, option, message):
    options = option if option[0] == "--model" else ["--model", "ume-r1-tiny", *option]
    assert main(["encode", str(EXAMPLES / "inputs.jsonl"), *options, "--output", str(tmp_path / "out")]) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith("error: ") and message in line


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a CUDA GPU")
def test_cuda_on_a_machine_without_it_is_one_line(tmp_path, capsys):
    args = ["encode", str(EXAMPLES / "inputs.jsonl"), "--model", "ume-r1-tiny", "--device", "cuda"]
    assert main([*args, "--output", str(tmp_path / "out")]) == 2
    assert capsys.readouterr().err.strip() == "error: device 'cuda': torch finds no CUDA device on this machine"


def test_a_job_says_the_forced_gen_emb_count_once_not_once_per_chunk(tmp_path, caplog):
    args = ["encode", str(EXAMPLES / "inputs.jsonl"), "--model", "ume-r1-tiny", "--output", str(tmp_path / "out")]
    with caplog.at_level(logging.WARNING, logger="ume_plugins"):
        assert main([*args, "--chunk-size", "2", "--max-new-tokens", "2", "--no-progress"]) == 0
    said = [record.getMessage() for record in caplog.records if "without writing <gen_emb>" in record.getMessage()]
    assert [message.split(" rollouts")[0] for message in said] == ["5 of 5"]


def test_a_job_whose_every_input_fails_exits_1_and_says_so(tmp_path, capsys):
    source = tmp_path / "in.jsonl"
    source.write_text('{"id": "a", "image": "missing.png"}\n{"id": "b", "video": "gone.mp4"}\n')
    assert main(["encode", str(source), "--model", "ume-r1-tiny", "--output", str(tmp_path / "out")]) == 1
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        "error: none of the 2 inputs could be embedded (see errors.jsonl)"
    )
    assert len((tmp_path / "out" / "errors.jsonl").read_text().splitlines()) == 2


def test_duplicate_ids_are_refused_before_any_work(tmp_path, capsys):
    source = tmp_path / "dup.jsonl"
    source.write_text('{"id": "a", "text": "x"}\n{"id": "b", "text": "y"}\n{"id": "a", "text": "z"}\n')
    assert main(["encode", str(source), "--model", "ume-r1-tiny", "--output", str(tmp_path / "out")]) == 2
    assert "duplicate ids: 'a' on line 1, line 3" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_a_parquet_job_writes_what_the_same_jsonl_job_writes(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    gradient((84, 56)).save(tmp_path / "photo.png")
    rows = [
        {"id": "t", "text": "a red fox"},
        {"id": "i", "image": "photo.png"},
        {"id": "f", "text": "a photo", "image": "photo.png"},
        {"id": "gone", "image": "missing.png"},
    ]
    (tmp_path / "in.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    photo = (tmp_path / "photo.png").read_bytes()
    image = [None, {"bytes": photo, "path": None}, {"bytes": None, "path": "photo.png"}, {"path": "missing.png"}]
    table = pa.table({"id": ["t", "i", "f", "gone"], "text": ["a red fox", None, "a photo", None], "image": image})
    pq.write_table(table, tmp_path / "in.parquet")
    outputs = {}
    for name in ("in.jsonl", "in.parquet"):
        output = tmp_path / f"out-{name}"
        args = ["encode", str(tmp_path / name), "--model", "ume-r1-tiny", "--output", str(output)]
        assert main([*args, "--mode", "discriminative", "--no-progress"]) == 0
        outputs[name] = {file: (output / file).read_bytes() for file in ("embeddings.npy", "records.jsonl")}
        errors = [json.loads(line) for line in (output / "errors.jsonl").open()]
        assert [(error["index"], error["id"]) for error in errors] == [(3, "gone")]
    assert outputs["in.jsonl"] == outputs["in.parquet"]


def run_cli(*args: str, env: dict[str, str], timeout: float = 300) -> subprocess.CompletedProcess:
    """The installed ``ume-plugins`` command, as a user runs it."""
    command = Path(sys.executable).parent / "ume-plugins"
    return subprocess.run([str(command), *args], capture_output=True, text=True, env=env, timeout=timeout)


def test_help_and_version_answer_without_loading_torch_or_the_hosts():
    from ume_plugins import __version__

    env = {**os.environ, "PYTHONPROFILEIMPORTTIME": "1"}
    version = run_cli("--version", env=env)
    assert version.returncode == 0 and version.stdout == f"ume-plugins {__version__}\n"
    helped = run_cli("--help", env=env)
    assert helped.returncode == 0 and "encode" in helped.stdout
    for result in (version, helped):
        imported = {line.split("|")[-1].strip().split(".")[0] for line in result.stderr.splitlines() if "|" in line}
        assert imported.isdisjoint({"torch", "transformers", "sentence_transformers", "ray", "PIL", "numpy"})


@pytest.fixture
def empty_hub_cache(tmp_path):
    """An environment whose Hugging Face cache holds nothing."""
    env = {key: value for key, value in os.environ.items() if not key.startswith(("HF_", "TRANSFORMERS_"))}
    return {**env, "HF_HOME": str(tmp_path / "hf-home")}


def test_an_offline_hub_without_the_model_is_one_line(tmp_path, empty_hub_cache):
    source = tmp_path / "in.jsonl"
    source.write_text('{"text": "hi"}\n')
    env = {**empty_hub_cache, "HF_HUB_OFFLINE": "1"}
    result = run_cli("encode", str(source), "--model", "ume-r1", "--output", str(tmp_path / "out"), env=env)
    assert result.returncode == 2
    (line,) = result.stderr.splitlines()
    assert line.startswith("error: ume-r1 (zhibinlan/UME-R1-2B@e7aaa25) is not in the local Hugging Face cache")
    assert "HF_HUB_OFFLINE" in line and "--model PATH" in line and "ume-r1-tiny" in line
    assert not (tmp_path / "out").exists()


@contextlib.contextmanager
def silent_endpoint():
    """A hub endpoint that accepts connections and never answers."""
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(8)
        yield f"http://127.0.0.1:{server.getsockname()[1]}"


@pytest.mark.parametrize("endpoint", ["closed", "silent"])
def test_an_unreachable_hub_is_one_line_within_seconds(tmp_path, empty_hub_cache, endpoint):
    from ume_plugins.hub_access import PROBE_TIMEOUT_S

    source = tmp_path / "in.jsonl"
    source.write_text('{"text": "hi"}\n')
    with contextlib.ExitStack() as stack:
        url = closed_port_url().rsplit("/", 1)[0] if endpoint == "closed" else stack.enter_context(silent_endpoint())
        env = {**empty_hub_cache, "HF_ENDPOINT": url}
        args = ("encode", str(source), "--model", "ume-r1-7b", "--output", str(tmp_path / "out"))
        result = run_cli(*args, env=env)
    assert result.returncode == 2
    (line,) = result.stderr.splitlines()
    assert line.startswith(f"error: cannot reach {url} (")
    assert "to download ume-r1-7b (zhibinlan/UME-R1-7B@b5c08e3)" in line and "ume-r1-tiny" in line
    if endpoint == "silent":
        assert f"timed out after {PROBE_TIMEOUT_S:g} s" in line


def test_host_warnings_print_once():
    script = (
        "from ume_plugins.cli import configure_logging\n"
        "configure_logging()\n"
        "from huggingface_hub.utils import logging as hub\n"
        "from transformers.utils import logging as transformers\n"
        "hub.get_logger('huggingface_hub.utils._http').warning('hub-probe')\n"
        "transformers.get_logger('transformers.modeling_utils').warning('transformers-probe')\n"
        "import logging; logging.getLogger('ume_plugins.cli').warning('ume-probe')\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    counts = {probe: result.stderr.count(probe) for probe in ("hub-probe", "transformers-probe", "ume-probe")}
    assert counts == {"hub-probe": 1, "transformers-probe": 1, "ume-probe": 1}, result.stderr
