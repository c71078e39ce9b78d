"""Input files of a job: a JSONL file, a folder or Parquet data becomes ``(id, raw input)`` records."""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ume_plugins.errors import UMEInputError
from ume_plugins.sources import IMAGE_EXTENSIONS, URL_SCHEME, VIDEO_EXTENSIONS

TEXT_EXTENSIONS = frozenset({".txt", ".md"})
PARQUET_EXTENSION = ".parquet"
PARQUET_COLUMNS = ("id", "text", "image", "video")
PYARROW_REQUIREMENT = "pip install pyarrow"
Record = tuple[str, Any]


@dataclass(frozen=True)
class TextFile:
    """A text file of an input folder, read only when its chunk runs, so a bad file costs only itself."""

    path: Path

    def load(self) -> dict[str, str]:
        """The file as a text input.

        Raises:
            UMEInputError: The file cannot be read or is not UTF-8.
        """
        try:
            return {"text": self.path.read_bytes().decode("utf-8")}
        except UnicodeDecodeError as error:
            raise UMEInputError(f"{str(self.path)!r} is not UTF-8 text (bad byte at offset {error.start})") from None
        except OSError as error:
            raise UMEInputError(f"cannot read {str(self.path)!r}: {error.strerror or error}") from None


def read_records(source: Path) -> list[Record]:
    """Inputs of a job as ``(id, raw input)`` pairs.

    - A ``.jsonl`` file holds one object per line with optional ``id`` (default: the line number)
      and any of ``text``, ``image`` (path, URL or list) and ``video`` (path, URL or list of frame
      paths); other keys are kept. Relative paths are resolved against the file's folder.
    - A ``.parquet`` file, or a folder holding ``.parquet`` files (read in sorted path order), has
      the columns ``id`` (default: the row number, from 1), ``text``, ``image`` and ``video``; an
      image cell is a path, a URL, encoded bytes, a ``{"bytes", "path"}`` struct (the Hugging Face
      ``Image`` feature) or a list of those; other columns are ignored.
    - Any other folder contributes its images, videos and ``.txt``/``.md`` texts (sorted,
      recursively), each identified by its relative path.

    Raises:
        ValueError: A missing source, a line that is not UTF-8 or not a JSON object, an unreadable
            Parquet file, ids used twice (naming their lines or rows), or nothing to embed.
    """
    if not source.exists():
        raise ValueError(f"{source}: no such file or folder")
    parquet_files = _parquet_files(source)
    if parquet_files:
        records, places = _parquet_records(parquet_files)
    elif source.is_dir():
        records, places = _folder_records(source), None  # relative paths: unique by construction
    else:
        numbered = [(_jsonl_record(line, number, source), number) for number, line in _jsonl_lines(source)]
        records, places = [record for record, _ in numbered], [f"line {number}" for _, number in numbered]
    if not records:
        raise ValueError(f"nothing to embed in {source}")
    if places is not None:
        _refuse_duplicate_ids(source, records, places)
    return records


def _refuse_duplicate_ids(source: Path, records: list[Record], places: list[str]) -> None:
    """An id names one input: results and errors are looked up by it."""
    where: dict[str, list[str]] = defaultdict(list)
    for (key, _), place in zip(records, places, strict=True):
        where[key].append(place)
    repeated = [(key, spots) for key, spots in where.items() if len(spots) > 1]
    if repeated:
        shown = "; ".join(f"{key!r} on {', '.join(spots)}" for key, spots in repeated[:5])
        more = f" (and {len(repeated) - 5} more)" if len(repeated) > 5 else ""
        raise ValueError(f"{source}: duplicate ids: {shown}{more}")


def _folder_records(source: Path) -> list[Record]:
    records: list[Record] = []
    for path in sorted(p for p in source.rglob("*") if p.is_file()):
        suffix = path.suffix.lower()
        key = path.relative_to(source).as_posix()
        if suffix in IMAGE_EXTENSIONS or suffix in VIDEO_EXTENSIONS:
            records.append((key, path))
        elif suffix in TEXT_EXTENSIONS:
            records.append((key, TextFile(path)))
    return records


def _jsonl_lines(path: Path) -> Iterator[tuple[int, str]]:
    try:
        file = path.open("rb")
    except OSError as error:
        raise ValueError(f"{path}: cannot read ({error.strerror or error})") from None
    with file:
        for number, data in enumerate(file, start=1):
            try:
                line = data.decode("utf-8-sig" if number == 1 else "utf-8")
            except UnicodeDecodeError as error:
                raise ValueError(f"{path}, line {number}: not valid UTF-8 (bad byte at offset {error.start})") from None
            if line.strip():
                yield number, line


def _jsonl_record(line: str, number: int, source: Path) -> Record:
    try:
        row = json.loads(line)
    except json.JSONDecodeError as error:
        raise ValueError(f"{source}, line {number}: invalid JSON ({error.msg})") from None
    if not isinstance(row, dict):
        raise ValueError(f"{source}, line {number}: expected a JSON object")
    key = str(row.pop("id", number))
    for field in ("image", "video"):
        if field in row:
            row[field] = _resolve_paths(row[field], source.parent)
    return key, row


def _parquet_files(source: Path) -> list[Path]:
    if source.is_file():
        return [source] if source.suffix.lower() == PARQUET_EXTENSION else []
    return sorted(path for path in source.rglob(f"*{PARQUET_EXTENSION}") if path.is_file())


def _parquet_records(files: list[Path]) -> tuple[list[Record], list[str]]:
    try:
        import pyarrow.parquet as parquet
    except ImportError:
        raise ValueError(f"reading Parquet needs pyarrow: {PYARROW_REQUIREMENT}") from None
    records: list[Record] = []
    places: list[str] = []
    for path in files:
        try:
            schema = parquet.read_schema(path)
            columns = [name for name in PARQUET_COLUMNS if name in schema.names]
            rows = parquet.read_table(path, columns=columns).to_pylist()
        except Exception as error:  # pyarrow raises its own ArrowInvalid / OSError family
            raise ValueError(f"{path}: not a readable Parquet file ({error})") from None
        if not set(columns) & {"text", "image", "video"}:
            raise ValueError(f"{path}: has none of the columns text, image, video")
        for row in rows:
            number = len(records) + 1
            key = row.pop("id", None)
            raw = {
                field: value if field == "text" else _parquet_cell(value, path.parent)
                for field, value in row.items()
                if value is not None
            }
            records.append((str(number if key is None else key), raw))
            places.append(f"row {number}" if len(files) == 1 else f"row {number} ({path.name})")
    return records, places


def _parquet_cell(value: Any, base: Path) -> Any:
    if isinstance(value, dict) and set(value) <= {"bytes", "path"}:  # the Hugging Face Image feature
        value = value.get("bytes") or value.get("path")
    if isinstance(value, list):
        return [_parquet_cell(entry, base) for entry in value]
    return _resolve_paths(value, base)


def _resolve_paths(value: Any, base: Path) -> Any:
    if isinstance(value, list):
        return [_resolve_paths(entry, base) for entry in value]
    # URLs of any scheme stay as written, so that the input rules judge them.
    if isinstance(value, str) and not value.startswith("data:") and not URL_SCHEME.match(value):
        path = Path(value)
        return str(path if path.is_absolute() else base / path)
    return value
