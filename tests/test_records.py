"""Job inputs: JSONL, Parquet and folders become ``(id, raw input)`` records, or a clear refusal."""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from ume_plugins.records import TextFile, read_records


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def test_jsonl_ids_default_to_line_numbers_and_relative_paths_resolve(tmp_path):
    source = write_jsonl(tmp_path / "in.jsonl", [{"id": "a", "image": "x.png"}, {"text": "t", "video": ["f1.png"]}])
    assert read_records(source) == [
        ("a", {"image": str(tmp_path / "x.png")}),
        ("2", {"text": "t", "video": [str(tmp_path / "f1.png")]}),
    ]


def test_duplicate_jsonl_ids_are_refused_naming_their_lines(tmp_path):
    rows = [{"id": "a", "text": "1"}, {"id": "b", "text": "2"}, {"id": "a", "text": "3"}, {"text": "4"}, {"id": 4}]
    with pytest.raises(ValueError, match=r"duplicate ids: 'a' on line 1, line 3; '4' on line 4, line 5"):
        read_records(write_jsonl(tmp_path / "in.jsonl", rows))


def test_a_missing_source_is_named(tmp_path):
    with pytest.raises(ValueError, match=r"nowhere\.jsonl: no such file or folder"):
        read_records(tmp_path / "nowhere.jsonl")


def test_a_folder_gives_its_media_and_texts_by_relative_path(tmp_path):
    (tmp_path / "sub").mkdir()
    for name in ("b.png", "sub/a.mp4", "note.md", "skip.csv"):
        (tmp_path / name).write_bytes(b"x")
    records = read_records(tmp_path)
    assert [key for key, _ in records] == ["b.png", "note.md", "sub/a.mp4"]
    assert records[1][1] == TextFile(tmp_path / "note.md")


def test_parquet_columns_become_inputs(tmp_path):
    table = pa.table(
        {
            "id": ["cap", None, "both"],
            "text": ["a caption", None, "a photo"],
            "image": [None, {"bytes": b"\x89PNG", "path": None}, {"bytes": None, "path": "photo.png"}],
            "video": [None, None, ["f1.png", "http://example.com/f2.png"]],
            "label": [1, 2, 3],  # not an input column: ignored
        }
    )
    pq.write_table(table, tmp_path / "data.parquet")
    assert read_records(tmp_path / "data.parquet") == [
        ("cap", {"text": "a caption"}),
        ("2", {"image": b"\x89PNG"}),
        (
            "both",
            {
                "text": "a photo",
                "image": str(tmp_path / "photo.png"),
                "video": [str(tmp_path / "f1.png"), "http://example.com/f2.png"],
            },
        ),
    ]


def test_a_parquet_folder_is_read_in_path_order_with_rows_numbered_across_files(tmp_path):
    pq.write_table(pa.table({"text": ["b1", "b2"]}), tmp_path / "part-1.parquet")
    pq.write_table(pa.table({"id": ["x"], "text": ["a1"]}), tmp_path / "part-0.parquet")
    (tmp_path / "README.md").write_text("not an input of a Parquet folder")
    assert read_records(tmp_path) == [("x", {"text": "a1"}), ("2", {"text": "b1"}), ("3", {"text": "b2"})]


def test_duplicate_parquet_ids_are_refused_naming_rows(tmp_path):
    pq.write_table(pa.table({"id": [7, 8, 7], "text": ["a", "b", "c"]}), tmp_path / "data.parquet")
    with pytest.raises(ValueError, match=r"duplicate ids: '7' on row 1, row 3"):
        read_records(tmp_path / "data.parquet")


def test_a_parquet_file_without_input_columns_is_refused(tmp_path):
    pq.write_table(pa.table({"id": ["a"], "caption": ["b"]}), tmp_path / "data.parquet")
    with pytest.raises(ValueError, match="has none of the columns text, image, video"):
        read_records(tmp_path / "data.parquet")
