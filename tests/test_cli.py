from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ume_plugins.cli import main

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
