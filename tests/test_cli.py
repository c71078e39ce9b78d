from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import gradient
from tests.hostile import CASES, MAX_URL_BYTES, URL_TIMEOUT, Case, corpus_model, hostile_env
from ume_plugins.cli import main
from ume_plugins.inputs import VIDEO_EXTENSIONS

EXAMPLES = Path(__file__).resolve().parents[1] / "examples" / "data"


def test_encode_jsonl_in_generative_mode_writes_vectors_and_reasoning(tmp_path, tiny_path, capsys):
    assert main(["encode", str(EXAMPLES / "inputs.jsonl"), "--model", "ume-r1-tiny", "--output", str(tmp_path)]) == 0
    assert "RANDOM weights" in capsys.readouterr().err
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
    assert "line 2: invalid JSON" in capsys.readouterr().err


def test_build_tiny_writes_a_checkpoint(tmp_path):
    assert main(["build-tiny", str(tmp_path / "tiny"), "--seed", "3"]) == 0
    assert (tmp_path / "tiny" / "model.safetensors").is_file()


def test_a_malformed_or_non_utf8_jsonl_line_is_reported(tmp_path, capsys):
    source = tmp_path / "bad.jsonl"
    source.write_bytes(b'{"text": "ok"}\n{"text": "caf\xe9"}\n')
    assert main(["encode", str(source), "--model", "ume-r1-tiny", "--output", str(tmp_path / "out")]) == 2
    assert "line 2: not valid UTF-8" in capsys.readouterr().err


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


def test_a_folder_job_records_unreadable_files_and_texts(tmp_path):
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
    assert json.loads((tmp_path / "out" / "manifest.json").read_text())["job"]["settings"]["allow_network"] is False
