"""MMEB-V2 on local folders: MMEB's metrics, instructions per task and row, the paper's table."""

from __future__ import annotations

import json
import logging
import math
import shutil

import numpy as np
import pytest
from ume_mteb.cli import main
from ume_mteb.mmeb import (
    TASKS,
    embed_records,
    evaluate_mmeb,
    evaluate_task,
    format_table,
    hit_at_1,
    ndcg_at_5,
    summarise,
)


def test_instruction_table_holds_the_spec():
    assert TASKS["MSR-VTT"].query_instruction == "Find a video that contains the following visual content:"
    assert TASKS["MSR-VTT"].target_instruction == "Understand the content of the provided video."
    assert TASKS["MSVD"].query_instruction == "Find the video snippet that corresponds to the given summary:"
    assert TASKS["K700"].query_instruction == "Recognize the category of the video content."
    assert TASKS["VisRAG_ArxivQA"].query_instruction == "Find a document image that matches the given query:"
    assert TASKS["VisRAG_ArxivQA"].target_instruction == "Understand the content of the provided document image."
    assert TASKS["ViDoRe_docvqa"].query_instruction == "" and TASKS["MMLongBench-doc"].target_instruction == ""
    counts = {modality: sum(task.modality == modality for task in TASKS.values()) for modality in ("image", "video")}
    assert counts == {"image": 36, "video": 18}
    assert {TASKS["CIRR"].metric, TASKS["ViDoSeek-page"].metric} == {"hit@1", "ndcg@5"}


def test_metrics():
    assert hit_at_1(["b", "a"], ["b"]) == 1.0 and hit_at_1(["a", "b"], ["b"]) == 0.0
    assert ndcg_at_5(["a", "b"], ["b"]) == pytest.approx(1 / math.log2(3))
    assert ndcg_at_5(["x"] * 5 + ["b"], ["b"]) == 0.0  # past the cut-off
    graded = ndcg_at_5(["c", "b", "a"], ["b", "c"], [2.0, 1.0])  # linear gains, ideal b then c
    assert graded == pytest.approx((1 + 2 / math.log2(3)) / (2 + 1 / math.log2(3)))


@pytest.fixture(scope="module")
def mmeb_root(tmp_path_factory, files):
    """A visdoc task (no instruction) and an image task, with answers known from identical inputs."""
    root = tmp_path_factory.mktemp("mmeb")
    visdoc = root / "ViDoRe_docvqa"
    visdoc.mkdir()
    for seed in range(4):
        files.image(visdoc / f"page{seed}.png", seed)
    files.jsonl(
        visdoc / "candidates.jsonl",
        [{"id": f"p{seed}", "image": f"page{seed}.png"} for seed in range(4)]
        + [{"id": "p0-copy", "image": "page0.png"}],
    )
    files.jsonl(
        visdoc / "queries.jsonl",
        [
            {"id": "q1", "image": "page1.png", "positives": ["p1"]},  # twin first: 1
            {"id": "q0", "image": "page0.png", "positives": ["p0", "p0-copy"], "relevance": [2, 1]},  # tie kept: 1
            {"id": "q2", "image": "page2.png", "positives": ["p0-copy"], "candidates": ["p2", "p0-copy"]},
        ],
    )
    image = root / "CIRR"
    image.mkdir()
    for seed in range(3):
        files.image(image / f"img{seed}.png", 10 + seed)
    # per-row instructions: the query asks with the targets' instruction, so twins are identical inputs
    files.jsonl(
        image / "queries.jsonl",
        [
            {"image": f"img{seed}.png", "instruction": "Represent the given image.", "positives": [f"c{seed}"]}
            for seed in range(3)
        ],
    )
    files.jsonl(
        image / "candidates.jsonl",
        [
            {"id": f"c{seed}", "image": f"img{seed}.png", "instruction": "Represent the given image."}
            for seed in range(3)
        ],
    )
    return root


def test_known_answers(mmeb_root, disc_encoder):
    scores = evaluate_mmeb(disc_encoder, mmeb_root)
    # q2 ranks its twin p2 first among [p2, p0-copy]: the gold one sits at rank 2
    assert scores["ViDoRe_docvqa"] == pytest.approx(100 * (1 + 1 + 1 / math.log2(3)) / 3)
    assert scores["CIRR"] == pytest.approx(100.0)


def test_rows_without_instruction_get_the_tasks(disc_encoder, tmp_path, files):
    folder = tmp_path / "MSR-VTT"
    folder.mkdir()
    files.jsonl(folder / "queries.jsonl", [{"id": "q", "text": "a man cooks pasta", "positives": ["v"]}])
    files.jsonl(folder / "candidates.jsonl", [{"id": "v", "text": "a man cooks pasta"}, {"id": "w", "text": "rain"}])
    vectors = embed_records(
        disc_encoder, [("q", {"text": "a man cooks pasta"})], TASKS["MSR-VTT"].query_instruction, "t", 8
    )
    expected = disc_encoder.model.encode(["a man cooks pasta"], prompt=TASKS["MSR-VTT"].query_instruction)
    np.testing.assert_allclose(vectors, expected, atol=1e-5)
    assert 0.0 <= evaluate_task(disc_encoder, folder) <= 100.0


def test_summary_table_and_cli(mmeb_root, tmp_path, capsys, tiny_path):
    summary = summarise({"CIRR": 80.0, "MSCOCO": 60.0, "ViDoRe_docvqa": 50.0, "MSR-VTT": 20.0})
    assert summary["image"] == {"RET": 80.0, "VG": 60.0, "overall": 70.0}
    assert summary["visdoc"]["overall"] == 50.0 and summary["video"]["RET"] == 20.0
    assert summary["all"]["overall"] == pytest.approx(52.5)
    table = format_table({"CIRR": 80.0}, {"image": 66.6})
    assert "| image | RET 80.0 | 80.0 | 1 | 66.6 |" in table
    output = tmp_path / "mmeb.json"
    args = ["mmeb", str(mmeb_root), "--model", "ume-r1-tiny", "--mode", "discriminative", "--device", "cpu"]
    assert main([*args, "--output", str(output)]) == 0
    record = json.loads(output.read_text())
    assert record["scores"]["CIRR"] == pytest.approx(100.0) and record["mode"] == "discriminative"
    assert "| visdoc |" in capsys.readouterr().out


def test_misnamed_task_folders_are_named_with_the_closest_task(mmeb_root, disc_encoder, tmp_path, caplog):
    root = tmp_path / "root"
    shutil.copytree(mmeb_root / "CIRR", root / "CIRR")
    (root / "MSRVTT").mkdir()
    with caplog.at_level(logging.WARNING, logger="ume_mteb"):
        scores = evaluate_mmeb(disc_encoder, root)
    assert list(scores) == ["CIRR"]
    (warning,) = [record.getMessage() for record in caplog.records if "Skipping" in record.getMessage()]
    assert "MSRVTT (closest task: MSR-VTT)" in warning


def test_a_missing_root_is_one_line_and_exit_2(tmp_path, capsys):
    args = ["mmeb", str(tmp_path / "nope"), "--model", "ume-r1-tiny", "--device", "cpu"]
    assert main(args) == 2
    assert capsys.readouterr().err.strip() == f"error: MMEB-V2 root {tmp_path / 'nope'} is not a folder"
