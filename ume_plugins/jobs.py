"""The output folder of a resumable ``ume-plugins encode`` job.

While the job runs the folder holds::

    manifest.json       what the job is (input, model, settings, chunking) and its fingerprint
    chunks/000000.json  one finished chunk: its records, its skipped inputs and its vectors
    ...

and once it is done::

    embeddings.npy      float32 [embedded inputs, dim], assembled from the chunks in order
    records.jsonl       one row per embedded input (its ``id``, and its reasoning when generative)
    errors.jsonl        one row per skipped input: ``index`` (0-based, in the job's input order), ``id``, ``error``
    run.json            a summary, written last: its presence marks the job finished

Every file is written under a temporary name, flushed, fsynced and renamed into place (then the
folder is fsynced), so a file under its final name is always complete: a killed job leaves at most
a stray ``.*.tmp`` file, which is ignored. A chunk's file is the proof that it is finished. Chunks
are fixed slices of the inputs and each is computed the same way whenever it runs, so a resumed
job's output is byte-identical to an uninterrupted one's.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import shutil
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

MANIFEST = "manifest.json"
CHUNKS = "chunks"
EMBEDDINGS = "embeddings.npy"
RECORDS = "records.jsonl"
ERRORS = "errors.jsonl"
SUMMARY = "run.json"
FORMAT = "ume-plugins-encode/1"
_VECTOR_DTYPE = np.dtype("<f4")


class JobMismatchError(ValueError):
    """The output folder belongs to another job (or to no job at all)."""


@dataclass(frozen=True)
class Chunk:
    """What one slice of the inputs produced.

    Attributes:
        records: One row per embedded input, in input order (``id`` first).
        errors: One row per skipped input (``index``, ``id``, ``error``), in input order.
        vectors: ``[len(records), dim]`` float32 vectors, aligned with ``records``.
    """

    records: list[dict[str, Any]]
    errors: list[dict[str, Any]]
    vectors: np.ndarray


def fingerprint(definition: dict[str, Any]) -> str:
    """A stable hash of a job's definition (any JSON-serialisable dict)."""
    canonical = json.dumps(definition, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def write_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that ``path`` is either absent, its old content, or complete."""
    temporary = _temporary(path)
    with temporary.open("wb") as file:
        file.write(data)
        file.flush()
        os.fsync(file.fileno())
    _commit(temporary, path)


class JobFolder:
    """The output folder of one encode job.

    Args:
        root: The folder (created when missing).
        definition: What the job is; a folder holding another definition is refused.
        chunk_count: Number of chunks the inputs are split into.
        dim: Vector size (for an empty ``embeddings.npy``).

    Raises:
        JobMismatchError: ``root`` belongs to a different job, or holds files of no job.
    """

    def __init__(self, root: Path, definition: dict[str, Any], chunk_count: int, dim: int) -> None:
        self.root = root
        self.chunk_count = chunk_count
        self.dim = dim
        self._claim(definition)

    @property
    def is_finished(self) -> bool:
        """True once the final artefacts are all in place."""
        return (self.root / SUMMARY).is_file()

    def finished_chunks(self) -> set[int]:
        """Indices of the chunks already written."""
        return {index for index in range(self.chunk_count) if self._chunk_path(index).is_file()}

    def save_chunk(self, index: int, chunk: Chunk) -> None:
        """Write one finished chunk."""
        vectors = np.ascontiguousarray(chunk.vectors, dtype=_VECTOR_DTYPE)
        payload = {
            "index": index,
            "records": chunk.records,
            "errors": chunk.errors,
            "shape": list(vectors.shape),
            "vectors": base64.b64encode(vectors.tobytes()).decode("ascii"),
        }
        write_atomic(self._chunk_path(index), _json_bytes(payload))

    def load_chunk(self, index: int) -> Chunk:
        """Read one finished chunk."""
        payload = json.loads(self._chunk_path(index).read_text(encoding="utf-8"))
        vectors = np.frombuffer(base64.b64decode(payload["vectors"]), dtype=_VECTOR_DTYPE)
        return Chunk(payload["records"], payload["errors"], vectors.reshape(payload["shape"]))

    def assemble(self, summary: dict[str, Any]) -> None:
        """Write the final artefacts from the chunks (all must be finished), ``run.json`` last.

        ``summary`` is completed with the counts of embedded and skipped inputs.
        """
        records_path, errors_path = _temporary(self.root / RECORDS), _temporary(self.root / ERRORS)
        raw_path = _temporary(self.root / "embeddings.raw")
        embedded = skipped = 0
        with records_path.open("wb") as records, errors_path.open("wb") as errors, raw_path.open("wb") as raw:
            for index in range(self.chunk_count):
                chunk = self.load_chunk(index)
                records.writelines(_jsonl_lines(chunk.records))
                errors.writelines(_jsonl_lines(chunk.errors))
                raw.write(np.ascontiguousarray(chunk.vectors, dtype=_VECTOR_DTYPE).tobytes())
                embedded += len(chunk.records)
                skipped += len(chunk.errors)
            for file in (records, errors):
                file.flush()
                os.fsync(file.fileno())
        self._write_npy(raw_path, (embedded, self.dim))
        _commit(records_path, self.root / RECORDS)
        _commit(errors_path, self.root / ERRORS)
        write_atomic(self.root / SUMMARY, _json_bytes({**summary, "count": embedded, "skipped": skipped}, indent=2))

    def clean(self) -> None:
        """Remove the chunks and stray temporary files of a finished job."""
        shutil.rmtree(self.root / CHUNKS, ignore_errors=True)
        for path in self.root.glob(".*.tmp"):
            path.unlink(missing_ok=True)

    def _claim(self, definition: dict[str, Any]) -> None:
        manifest = {"format": FORMAT, "fingerprint": fingerprint(definition), "job": definition}
        path = self.root / MANIFEST
        if self.root.exists() and not self.root.is_dir():
            raise JobMismatchError(f"{self.root} is a file, not a folder")
        if path.is_file():
            existing = json.loads(path.read_text(encoding="utf-8"))
            if existing.get("fingerprint") != manifest["fingerprint"]:
                differing = _differing_keys(definition, existing.get("job", {}))
                raise JobMismatchError(
                    f"{self.root} holds a different encode job (differs in: {', '.join(differing) or 'format'}); "
                    "re-run that job's exact command to resume it, or choose another --output"
                )
        else:
            leftovers = [p.name for p in self.root.iterdir() if not _is_temporary(p)] if self.root.is_dir() else []
            if leftovers:
                raise JobMismatchError(
                    f"{self.root} is not empty and holds no encode job ({', '.join(sorted(leftovers)[:3])}, ...); "
                    "choose an empty or new --output"
                )
            self.root.mkdir(parents=True, exist_ok=True)
            write_atomic(path, _json_bytes(manifest, indent=2))
        (self.root / CHUNKS).mkdir(exist_ok=True)

    def _chunk_path(self, index: int) -> Path:
        return self.root / CHUNKS / f"{index:06d}.json"

    def _write_npy(self, raw_path: Path, shape: tuple[int, int]) -> None:
        """``embeddings.npy``: the header ``np.save`` writes, then the vectors streamed from ``raw_path``."""
        temporary = _temporary(self.root / EMBEDDINGS)
        header = {"descr": _VECTOR_DTYPE.str, "fortran_order": False, "shape": shape}
        with temporary.open("wb") as file, raw_path.open("rb") as raw:
            np.lib.format.write_array_header_1_0(file, header)
            shutil.copyfileobj(raw, file)
            file.flush()
            os.fsync(file.fileno())
        raw_path.unlink()
        _commit(temporary, self.root / EMBEDDINGS)


def _differing_keys(new: dict[str, Any], old: dict[str, Any], prefix: str = "") -> list[str]:
    """Dotted names of the entries that differ between two definitions."""
    differing = []
    for key in sorted(set(new) | set(old)):
        if isinstance(new.get(key), dict) and isinstance(old.get(key), dict):
            differing += _differing_keys(new[key], old[key], f"{prefix}{key}.")
        elif new.get(key) != old.get(key):
            differing.append(prefix + key)
    return differing


def _temporary(path: Path) -> Path:
    return path.with_name(f".{path.name}.{os.getpid()}.tmp")


def _is_temporary(path: Path) -> bool:
    return path.name.startswith(".") and path.name.endswith(".tmp")


def _commit(temporary: Path, path: Path) -> None:
    os.replace(temporary, path)
    # The rename itself must reach the disk before anything relies on it.
    descriptor = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def _json_bytes(value: Any, indent: int | None = None) -> bytes:
    try:
        return (json.dumps(value, ensure_ascii=False, indent=indent) + "\n").encode("utf-8")
    except UnicodeEncodeError:
        # Lone surrogates (ids read from undecodable bytes) cannot be UTF-8; JSON escapes carry them.
        return (json.dumps(value, indent=indent) + "\n").encode("ascii")


def _jsonl_lines(rows: Iterable[dict[str, Any]]) -> Iterable[bytes]:
    return (_json_bytes(row) for row in rows)
