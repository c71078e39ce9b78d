"""The output folder of a resumable ``ume-plugins encode`` job.

While the job runs the folder holds::

    manifest.json       what the job is (input, model, settings, chunking, hardware) and its fingerprint
    chunks/000000.json  one finished chunk: its records, its skipped inputs and its vectors
    ...

and once it is done::

    embeddings.npy       float32 [embedded inputs, dim], assembled from the chunks in order
    disc_embeddings.npy  in mode "both" only: the discriminative vectors, row for row
    records.jsonl        one row per embedded input (its ``id``, and its reasoning when generative)
    errors.jsonl         one row per skipped input: ``index`` (0-based, in the job's input order), ``id``, ``error``
    run.json             a summary, written last: its presence marks the job finished

Every file is written under a temporary name, flushed, fsynced and renamed into place (then the
folder is fsynced), so a file under its final name is always complete: a killed job leaves at most
a stray ``.*.tmp`` file, which is ignored. A chunk's file is the proof that it is finished. Chunks
are fixed slices of the inputs and each is computed the same way whenever it runs, so a resumed
job's output is byte-identical to an uninterrupted one's.

A job's definition has two halves: the *request* (inputs, model name, options), known before any
model loads, so that a finished or foreign folder is recognised at once; and the *facts* of the
loaded model (settings, dimension, device, precision), which the folder records when the first
chunk is about to land (:meth:`JobFolder.claim`) and checks on every later run.
"""

from __future__ import annotations

import base64
import contextlib
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
DISC_EMBEDDINGS = "disc_embeddings.npy"
RECORDS = "records.jsonl"
ERRORS = "errors.jsonl"
SUMMARY = "run.json"
FORMAT = "ume-plugins-encode/2"
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
        disc_vectors: In mode ``"both"``, the discriminative vectors aligned with ``records``; else None.
    """

    records: list[dict[str, Any]]
    errors: list[dict[str, Any]]
    vectors: np.ndarray
    disc_vectors: np.ndarray | None = None


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

    Opening it writes nothing; :meth:`claim` writes the manifest when the first chunk is due.

    Args:
        root: The folder (created by :meth:`claim` when missing).
        request: The half of the job's definition known before the model loads.
        chunk_count: Number of chunks the inputs are split into.

    Raises:
        JobMismatchError: ``root`` is a file, holds a job whose request differs, or holds files
            of no job.
    """

    def __init__(self, root: Path, request: dict[str, Any], chunk_count: int) -> None:
        self.root = root
        self.request = json.loads(json.dumps(request))  # as a manifest reads back: lists, not tuples
        self.chunk_count = chunk_count
        self.definition = self._read_manifest()
        if self.definition is not None:
            self.expect(request)

    @property
    def is_finished(self) -> bool:
        """True once the final artefacts are all in place."""
        return self.definition is not None and (self.root / SUMMARY).is_file()

    def expect(self, values: dict[str, Any]) -> None:
        """Refuse the folder when its recorded job differs from ``values`` (a partial definition).

        Raises:
            JobMismatchError: Naming the differing entries (dotted, e.g. ``settings.max_length``).
        """
        if self.definition is not None:
            self._refuse_if_differing(_differing_keys(values, self.definition, only_new=True))

    def claim(self, facts: dict[str, Any]) -> None:
        """Record the job (request plus the loaded model's ``facts``), or check the recorded one.

        Raises:
            JobMismatchError: The folder holds this request computed under other facts.
        """
        definition = {**self.request, **json.loads(json.dumps(facts))}
        if self.definition is not None:
            self._refuse_if_differing(_differing_keys(definition, self.definition))
            return
        manifest = {"format": FORMAT, "fingerprint": fingerprint(definition), "job": definition}
        self.root.mkdir(parents=True, exist_ok=True)
        write_atomic(self.root / MANIFEST, _json_bytes(manifest, indent=2))
        self.definition = definition

    def finished_chunks(self) -> set[int]:
        """Indices of the chunks already written."""
        return {index for index in range(self.chunk_count) if self._chunk_path(index).is_file()}

    def save_chunk(self, index: int, chunk: Chunk) -> None:
        """Write one finished chunk (the folder must be claimed)."""
        if self.definition is None:
            raise RuntimeError("claim the job folder before saving chunks")
        payload = {"index": index, "records": chunk.records, "errors": chunk.errors, **_encoded(chunk.vectors)}
        if chunk.disc_vectors is not None:
            payload["disc"] = _encoded(chunk.disc_vectors)
        (self.root / CHUNKS).mkdir(exist_ok=True)
        write_atomic(self._chunk_path(index), _json_bytes(payload))

    def load_chunk(self, index: int) -> Chunk:
        """Read one finished chunk."""
        payload = json.loads(self._chunk_path(index).read_text(encoding="utf-8"))
        disc = _decoded(payload["disc"]) if "disc" in payload else None
        return Chunk(payload["records"], payload["errors"], _decoded(payload), disc)

    def assemble(self, summary: dict[str, Any]) -> None:
        """Write the final artefacts from the chunks (all must be finished), ``run.json`` last.

        ``summary`` is completed with the counts of embedded and skipped inputs.
        """
        records_path, errors_path = _temporary(self.root / RECORDS), _temporary(self.root / ERRORS)
        raw_paths = {name: _temporary(self.root / f"{name}.raw") for name in (EMBEDDINGS, DISC_EMBEDDINGS)}
        embedded = skipped = 0
        with contextlib.ExitStack() as files:
            records, errors = (files.enter_context(path.open("wb")) for path in (records_path, errors_path))
            raws = {name: files.enter_context(path.open("wb")) for name, path in raw_paths.items()}
            with_disc = False
            for index in range(self.chunk_count):
                chunk = self.load_chunk(index)
                records.writelines(_jsonl_lines(chunk.records))
                errors.writelines(_jsonl_lines(chunk.errors))
                raws[EMBEDDINGS].write(np.ascontiguousarray(chunk.vectors, dtype=_VECTOR_DTYPE).tobytes())
                if chunk.disc_vectors is not None:
                    with_disc = True
                    raws[DISC_EMBEDDINGS].write(np.ascontiguousarray(chunk.disc_vectors, dtype=_VECTOR_DTYPE).tobytes())
                embedded += len(chunk.records)
                skipped += len(chunk.errors)
            for file in (records, errors):
                file.flush()
                os.fsync(file.fileno())
        shape = (embedded, self.definition["dim"])
        self._write_npy(raw_paths[EMBEDDINGS], EMBEDDINGS, shape)
        if with_disc:
            self._write_npy(raw_paths[DISC_EMBEDDINGS], DISC_EMBEDDINGS, shape)
        else:
            raw_paths[DISC_EMBEDDINGS].unlink()
        _commit(records_path, self.root / RECORDS)
        _commit(errors_path, self.root / ERRORS)
        write_atomic(self.root / SUMMARY, _json_bytes({**summary, "count": embedded, "skipped": skipped}, indent=2))

    def clean(self) -> None:
        """Remove the chunks and stray temporary files of a finished job."""
        shutil.rmtree(self.root / CHUNKS, ignore_errors=True)
        for path in self.root.glob(".*.tmp"):
            path.unlink(missing_ok=True)

    def _read_manifest(self) -> dict[str, Any] | None:
        if self.root.exists() and not self.root.is_dir():
            raise JobMismatchError(f"{self.root} is a file, not a folder")
        path = self.root / MANIFEST
        if path.is_file():
            manifest = json.loads(path.read_text(encoding="utf-8"))
            if manifest.get("format") != FORMAT:
                self._refuse_if_differing(["format"])
            return manifest.get("job", {})
        leftovers = [p.name for p in self.root.iterdir() if not _is_temporary(p)] if self.root.is_dir() else []
        if leftovers:
            raise JobMismatchError(
                f"{self.root} is not empty and holds no encode job ({', '.join(sorted(leftovers)[:3])}, ...); "
                "choose an empty or new --output"
            )
        return None

    def _refuse_if_differing(self, differing: list[str]) -> None:
        if differing:
            raise JobMismatchError(
                f"{self.root} holds a different encode job (differs in: {', '.join(differing)}); "
                "re-run that job's exact command to resume it, or choose another --output"
            )

    def _chunk_path(self, index: int) -> Path:
        return self.root / CHUNKS / f"{index:06d}.json"

    def _write_npy(self, raw_path: Path, name: str, shape: tuple[int, int]) -> None:
        """An ``.npy`` file: the header ``np.save`` writes, then the vectors streamed from ``raw_path``."""
        temporary = _temporary(self.root / name)
        header = {"descr": _VECTOR_DTYPE.str, "fortran_order": False, "shape": shape}
        with temporary.open("wb") as file, raw_path.open("rb") as raw:
            np.lib.format.write_array_header_1_0(file, header)
            shutil.copyfileobj(raw, file)
            file.flush()
            os.fsync(file.fileno())
        raw_path.unlink()
        _commit(temporary, self.root / name)


def _encoded(vectors: np.ndarray) -> dict[str, Any]:
    vectors = np.ascontiguousarray(vectors, dtype=_VECTOR_DTYPE)
    return {"shape": list(vectors.shape), "vectors": base64.b64encode(vectors.tobytes()).decode("ascii")}


def _decoded(payload: dict[str, Any]) -> np.ndarray:
    return np.frombuffer(base64.b64decode(payload["vectors"]), dtype=_VECTOR_DTYPE).reshape(payload["shape"])


def _differing_keys(new: dict[str, Any], old: dict[str, Any], prefix: str = "", only_new: bool = False) -> list[str]:
    """Dotted names of the entries that differ between two definitions (``only_new``: of ``new``'s entries)."""
    differing = []
    for key in sorted(set(new) if only_new else set(new) | set(old)):
        if isinstance(new.get(key), dict) and isinstance(old.get(key), dict):
            differing += _differing_keys(new[key], old[key], f"{prefix}{key}.", only_new)
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
