"""Local Any2Any tasks: known-answer scores, mteb's cache layout, the CLI."""

from __future__ import annotations

import json
import logging

import mteb
import pytest
from mteb import ResultCache, TaskResult
from ume_mteb.cli import main
from ume_mteb.local_task import evaluate_local, local_task


@pytest.fixture(scope="module")
def task_folder(tmp_path_factory, files):
    """Each query is identical to one document; q3's judged document is not its twin."""
    folder = tmp_path_factory.mktemp("local_task")
    for seed in range(4):
        files.image(folder / f"img{seed}.png", seed)
    files.jsonl(
        folder / "queries.jsonl",
        [
            {"id": "q0", "image": "img0.png"},
            {"id": "q1", "text": "a cat sleeping on a red sofa"},
            {"id": "q2", "text": "two pictures", "image": ["img1.png", "img2.png"]},
            {"id": "q3", "image": "img3.png"},
        ],
    )
    files.jsonl(
        folder / "corpus.jsonl",
        [
            {"id": "d0", "image": "img0.png"},
            {"id": "d1", "text": "a cat sleeping on a red sofa"},
            {"id": "d2", "text": "two pictures", "image": ["img1.png", "img2.png"]},
            {"id": "d3", "image": "img3.png"},
            {"id": "d4", "text": "the quick brown fox"},
        ],
    )
    qrels = [("q0", "d0"), ("q1", "d1"), ("q2", "d2"), ("q3", "d4")]
    files.jsonl(folder / "qrels.jsonl", [{"query_id": q, "corpus_id": d, "score": 1} for q, d in qrels])
    return folder


def test_task_reads_modalities_and_hashes_content(task_folder):
    task = local_task(task_folder)
    assert task.metadata.category == "it2it"
    assert task.metadata.modalities == ["image", "text"]
    assert task.metadata.revision == local_task(task_folder).metadata.revision


@pytest.mark.parametrize("encoder_name", ["disc_encoder", "gen_encoder"])
def test_identical_inputs_rank_first(task_folder, encoder_name, request, tmp_path):
    encoder = request.getfixturevalue(encoder_name)
    result = evaluate_local(encoder, task_folder, cache=ResultCache(tmp_path))
    scores = result.scores["test"][0]
    # q0-q2 find their twins first; q3's judged document is not its twin.
    assert scores["hit_rate_at_1"] == pytest.approx(0.75)
    assert scores["ndcg_at_1"] == pytest.approx(0.75)
    assert scores["recall_at_5"] == pytest.approx(1.0)  # only five documents


def test_results_load_back_from_mteb_cache(task_folder, disc_encoder, tmp_path):
    cache = ResultCache(tmp_path)
    written = evaluate_local(disc_encoder, task_folder, cache=cache)
    meta = disc_encoder.mteb_model_meta
    path = cache.get_task_result_path(written.task_name, meta)
    assert path.parts[-5:-1] == (meta.model_name_as_path(), meta.revision, "experiments", "mode_discriminative")
    assert json.loads((path.parent / "model_meta.json").read_text())["experiment_kwargs"] == {"mode": "discriminative"}
    loaded = cache.load_task_result(written.task_name, meta)
    assert isinstance(loaded, TaskResult) and TaskResult.from_disk(path).get_score() == written.get_score()
    assert loaded.scores["test"][0]["hit_rate_at_1"] == pytest.approx(0.75)


def test_changed_data_is_rerun_not_read_from_cache(task_folder, disc_encoder, tmp_path, files):
    import shutil

    folder = shutil.copytree(task_folder, tmp_path / "task")
    cache = ResultCache(tmp_path / "cache")
    assert evaluate_local(disc_encoder, folder, cache=cache).scores["test"][0]["hit_rate_at_1"] == pytest.approx(0.75)
    files.jsonl(folder / "qrels.jsonl", [{"query_id": f"q{i}", "corpus_id": "d4"} for i in range(4)])
    assert evaluate_local(disc_encoder, folder, cache=cache).scores["test"][0]["hit_rate_at_1"] == 0.0


def test_videos_as_files_and_as_frame_folders(tmp_path, files, disc_encoder):
    for name in ("a", "b"):
        files.video(tmp_path / f"{name}.mp4", seed=ord(name))
    frames = tmp_path / "frames"
    frames.mkdir()
    for index in range(3):
        files.image(frames / f"{index:02d}.png", seed=10 + index, size=(64, 64))
    files.jsonl(tmp_path / "queries.jsonl", [{"id": "qa", "video": "a.mp4", "relevant": ["da"]}])
    files.jsonl(tmp_path / "corpus.jsonl", [{"id": "da", "video": "a.mp4"}, {"id": "db", "video": "b.mp4"}])
    assert evaluate_local(disc_encoder, tmp_path).scores["test"][0]["hit_rate_at_1"] == 1.0
    files.jsonl(tmp_path / "corpus.jsonl", [{"id": "da", "video": "frames"}, {"id": "db", "text": "words"}])
    files.jsonl(tmp_path / "queries.jsonl", [{"id": "qa", "video": [str(p) for p in sorted(frames.iterdir())]}])
    files.jsonl(tmp_path / "qrels.jsonl", [{"query_id": "qa", "corpus_id": "da"}])
    assert local_task(tmp_path).metadata.category == "v2vt"
    assert evaluate_local(disc_encoder, tmp_path).scores["test"][0]["hit_rate_at_1"] == 1.0


def test_bad_folders_fail_clearly(tmp_path, files):
    with pytest.raises(ValueError, match="queries.jsonl"):
        local_task(tmp_path)
    files.jsonl(tmp_path / "queries.jsonl", [{"id": "q", "text": "x", "relevant": ["missing"]}])
    files.jsonl(tmp_path / "corpus.jsonl", [{"id": "d", "text": "x"}])
    with pytest.raises(ValueError, match="missing"):
        local_task(tmp_path)


@pytest.mark.parametrize(
    ("row", "message"),
    [
        ({"id": "d2", "img": "page1.png"}, r"row 'd2' has unknown key\(s\) \['img'\]"),
        ({"id": "d2"}, "row 'd2' has no text, image or video"),
    ],
    ids=["misspelt key", "empty row"],
)
def test_a_corpus_row_that_would_embed_as_nothing_is_refused(tmp_path, files, row, message):
    # A typo must not be scored as an empty input.
    files.jsonl(tmp_path / "queries.jsonl", [{"id": "q", "text": "x", "relevant": ["d"]}])
    files.jsonl(tmp_path / "corpus.jsonl", [{"id": "d", "text": "x"}, row])
    with pytest.raises(ValueError, match=message) as refused:
        local_task(tmp_path)
    assert "corpus.jsonl" in str(refused.value)


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["--local", "{missing}"], "a local task folder needs queries.jsonl"),
        (["--tasks", "NoSuchTask"], "mteb has no such task"),
        (["--local", "{folder}", "--model", "./no-such-model"], "model folder ./no-such-model does not exist"),
        (["--local", "{folder}", "--device", "gpu"], "device 'gpu' is not a torch device"),
    ],
    ids=["missing folder", "unknown task", "missing model folder", "unknown device"],
)
def test_cli_mistakes_are_one_line_and_exit_2(task_folder, tmp_path, capsys, arguments, message):
    arguments = [arg.format(missing=tmp_path / "nope", folder=task_folder) for arg in arguments]
    model = [] if "--model" in arguments else ["--model", "ume-r1-tiny"]
    assert main(["run", *model, *arguments, "--output", str(tmp_path / "out")]) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith("error: ") and message in line


def test_a_generative_run_says_the_forced_gen_emb_count_once(task_folder, tmp_path, caplog):
    # mteb encodes queries and corpus in calls of their own; the user ran one command.
    model = ["--model", "ume-r1-tiny", "--mode", "generative", "--device", "cpu", "--max-new-tokens", "2"]
    with caplog.at_level(logging.WARNING, logger="ume_plugins"):
        assert main(["run", *model, "--local", str(task_folder), "--output", str(tmp_path)]) == 0
    said = [record.getMessage() for record in caplog.records if "without writing <gen_emb>" in record.getMessage()]
    assert len(said) == 1, said


def test_cli_run_local_writes_mteb_layout(task_folder, tmp_path, capsys, tiny_path):
    model = ["--model", "ume-r1-tiny", "--mode", "discriminative", "--device", "cpu"]
    assert main(["run", *model, "--local", str(task_folder), "--output", str(tmp_path)]) == 0
    written = list((tmp_path / "results").rglob(f"{task_folder.name}.json"))
    assert len(written) == 1 and "mode_discriminative" in written[0].parts
    result = mteb.TaskResult.from_disk(written[0])
    assert result.scores["test"][0]["hit_rate_at_1"] == pytest.approx(0.75)
    assert f"{task_folder.name}: {result.get_score():.4f} ({written[0]})" in capsys.readouterr().out
