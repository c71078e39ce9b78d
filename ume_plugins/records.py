"""Input files of a job: a JSONL file or a folder becomes ``(id, raw input)`` records."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ume_plugins.errors import UMEInputError
from ume_plugins.inputs import IMAGE_EXTENSIONS, URL_SCHEME, VIDEO_EXTENSIONS

TEXT_EXTENSIONS = frozenset({".txt", ".md"})


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


def read_records(source: Path) -> list[tuple[str, Any]]:
    """Inputs of a job as ``(id, raw input)`` pairs.

    A ``.jsonl`` file holds one object per line with optional ``id`` and any of ``text``,
    ``image`` (path, URL or list) and ``video`` (path, URL or list of frame paths); relative paths
    are resolved against the file's folder. A folder contributes its images, videos and
    ``.txt``/``.md`` texts (sorted, recursively), each identified by its relative path.

    Raises:
        ValueError: A line that is not UTF-8 or not a JSON object, or nothing to embed.
    """
    if source.is_dir():
        records: list[tuple[str, Any]] = []
        for path in sorted(p for p in source.rglob("*") if p.is_file()):
            suffix = path.suffix.lower()
            key = path.relative_to(source).as_posix()
            if suffix in IMAGE_EXTENSIONS or suffix in VIDEO_EXTENSIONS:
                records.append((key, path))
            elif suffix in TEXT_EXTENSIONS:
                records.append((key, TextFile(path)))
    else:
        records = [_jsonl_record(line, number, source.parent) for number, line in _jsonl_lines(source)]
    if not records:
        raise ValueError(f"nothing to embed in {source}")
    return records


def _jsonl_lines(path: Path) -> Iterator[tuple[int, str]]:
    with path.open("rb") as file:
        for number, data in enumerate(file, start=1):
            try:
                line = data.decode("utf-8-sig" if number == 1 else "utf-8")
            except UnicodeDecodeError as error:
                raise ValueError(f"line {number}: not valid UTF-8 (bad byte at offset {error.start})") from None
            if line.strip():
                yield number, line


def _jsonl_record(line: str, number: int, base: Path) -> tuple[str, Any]:
    try:
        row = json.loads(line)
    except json.JSONDecodeError as error:
        raise ValueError(f"line {number}: invalid JSON ({error.msg})") from None
    if not isinstance(row, dict):
        raise ValueError(f"line {number}: expected a JSON object")
    key = str(row.pop("id", number))
    for field in ("image", "video"):
        if field in row:
            row[field] = _resolve_paths(row[field], base)
    return key, row


def _resolve_paths(value: Any, base: Path) -> Any:
    if isinstance(value, list):
        return [_resolve_paths(entry, base) for entry in value]
    # URLs of any scheme stay as written, so that the input rules judge them.
    if isinstance(value, str) and not value.startswith("data:") and not URL_SCHEME.match(value):
        path = Path(value)
        return str(path if path.is_absolute() else base / path)
    return value
