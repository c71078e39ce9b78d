"""An encode job: its options, its plan against the output folder, and the local run.

:class:`Job` reads the inputs and opens the output folder without loading any model, so a
finished job, a foreign folder or bad input is answered at once. The chunks still to compute are
then embedded here (:func:`run_local`) or on a Ray cluster (:mod:`ume_plugins.distributed`); both
write the same folder (:mod:`ume_plugins.jobs`) through :meth:`Job.save`, and :meth:`Job.finish`
assembles it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ume_plugins import chunks
from ume_plugins.jobs import SUMMARY, Chunk, JobFolder
from ume_plugins.records import Record, read_records


@dataclass(frozen=True)
class JobOptions:
    """Everything a user chooses about an encode job.

    Attributes:
        input: A JSONL file, a Parquet file or folder, or a folder of images/videos/texts.
        output: The job's output folder.
        model: Alias, hub id or folder.
        mode: ``"generative"``, ``"discriminative"`` or ``"both"``; None keeps the checkpoint's.
        instruction: Task instruction placed before each text.
        batch_size: Inputs per forward pass.
        chunk_size: Inputs per saved chunk: the most work a crash can lose.
        max_length: Longest prompt in tokens; None keeps the checkpoint's.
        max_new_tokens: Reasoning budget; None keeps the checkpoint's.
        allow_network: Fetch http(s) URL inputs (else they are recorded as errors).
        url_timeout: Seconds allowed for URL connects and reads; None keeps the default.
        max_url_bytes: Largest URL body accepted; None keeps the default.
        device: Device of the local run; None picks the best available.
    """

    input: Path
    output: Path
    model: str = "ume-r1"
    mode: str | None = None
    instruction: str | None = None
    batch_size: int = 8
    chunk_size: int = 64
    max_length: int | None = None
    max_new_tokens: int | None = None
    allow_network: bool = True
    url_timeout: float | None = None
    max_url_bytes: int | None = None
    device: str | None = None

    def model_request(self, hub_kwargs: dict[str, Any] | None = None) -> chunks.ModelRequest:
        """What to load for this job: module settings plus the input policy's options."""
        settings = {"max_length": self.max_length, "max_new_tokens": self.max_new_tokens, **self.policy_options()}
        settings = {key: value for key, value in settings.items() if value is not None}
        return chunks.ModelRequest(self.model, self.mode, self.device, settings, dict(hub_kwargs or {}))

    def policy_options(self) -> dict[str, Any]:
        """The input policy asked for (see :mod:`ume_plugins.policy`); None keeps a default."""
        allow_network = None if self.allow_network else False
        return {"allow_network": allow_network, "url_timeout": self.url_timeout, "max_url_bytes": self.max_url_bytes}


@dataclass(frozen=True)
class JobResult:
    """What a finished job holds.

    Attributes:
        output: The output folder.
        mode: Embedding mode.
        dim: Vector size.
        inputs: Number of inputs.
        count: Inputs embedded (rows of ``embeddings.npy``).
        skipped: Inputs recorded in ``errors.jsonl``.
        computed: Chunks this run computed (none when the job was already finished).
    """

    output: Path
    mode: str
    dim: int
    inputs: int
    count: int
    skipped: int
    computed: tuple[int, ...]


class Job:
    """A planned job: its inputs, its chunks and its output folder.

    Raises:
        ValueError: Unreadable input (missing path, malformed line, duplicate ids, ...).
        ~ume_plugins.jobs.JobMismatchError: The output folder belongs to another job.
    """

    def __init__(self, options: JobOptions) -> None:
        self.options = options
        self.records = read_records(Path(options.input))
        self.chunk_count = math.ceil(len(self.records) / options.chunk_size)
        self.folder = JobFolder(Path(options.output), self._request(), self.chunk_count)
        self.folder.expect(self._requested_settings())

    @property
    def is_finished(self) -> bool:
        """True when the output folder already holds this job's final files."""
        return self.folder.is_finished

    def pending(self) -> list[int]:
        """Chunks still to compute, in order."""
        return sorted(set(range(self.chunk_count)) - self.folder.finished_chunks())

    def chunk_start(self, index: int) -> int:
        """Job index of a chunk's first input."""
        return index * self.options.chunk_size

    def chunk_records(self, index: int) -> Sequence[Record]:
        """A chunk's ``(id, raw input)`` pairs."""
        return self.records[self.chunk_start(index) : self.chunk_start(index + 1)]

    def inputs_in(self, indices: Sequence[int]) -> int:
        """Number of inputs in the given chunks."""
        return sum(len(self.chunk_records(index)) for index in indices)

    def save(self, index: int, chunk: Chunk, facts: dict[str, Any]) -> None:
        """Write one finished chunk computed by a model described by ``facts``.

        Raises:
            ~ume_plugins.jobs.JobMismatchError: ``facts`` differ from those the folder recorded.
        """
        self.folder.claim(facts)
        self.folder.save_chunk(index, chunk)

    def finish(self, computed: Sequence[int] = ()) -> JobResult:
        """Assemble the final files (unless already there), drop the chunks, and sum up."""
        if not self.folder.is_finished:
            definition = self.folder.definition
            summary = {"model": self.options.model, "mode": definition["mode"], "dim": definition["dim"]}
            self.folder.assemble({**summary, "inputs": len(self.records)})
        self.folder.clean()
        summary = json.loads((self.folder.root / SUMMARY).read_text(encoding="utf-8"))
        return JobResult(
            output=self.folder.root,
            mode=summary["mode"],
            dim=summary["dim"],
            inputs=summary["inputs"],
            count=summary["count"],
            skipped=summary["skipped"],
            computed=tuple(computed),
        )

    def _request(self) -> dict[str, Any]:
        """The half of the job's definition known before any model loads."""
        from ume_plugins import __version__

        options = self.options
        listing = json.dumps(self.records, default=str).encode("ascii")
        return {
            "input": str(Path(options.input).resolve()),
            "inputs": len(self.records),
            "inputs_sha256": hashlib.sha256(listing).hexdigest(),
            "model": options.model,
            "instruction": options.instruction,
            "batch_size": options.batch_size,
            "chunk_size": options.chunk_size,
            "allow_network": options.allow_network,
            **{key: value for key, value in options.policy_options().items() if key != "allow_network"},
            "ume_plugins": __version__,
        }

    def _requested_settings(self) -> dict[str, Any]:
        """The model facts the options pin down, checked against a recorded job before loading."""
        expected: dict[str, Any] = {"mode": self.options.mode} if self.options.mode else {}
        settings = self.options.model_request().settings
        for key in self.options.policy_options():
            settings.pop(key, None)  # part of the request itself
        return {**expected, "settings": settings} if settings else expected


def run_local(job: Job, progress: bool = True) -> JobResult:
    """Compute the job's pending chunks in this process, then assemble its output.

    Args:
        job: The planned job.
        progress: Show a progress bar (and transformers' weight-loading bar).

    Raises:
        ~ume_plugins.hub_access.HubUnreachableError: The model's hub cannot be reached.
    """
    from tqdm import tqdm
    from tqdm.contrib.logging import logging_redirect_tqdm

    from ume_plugins.hub_access import hub_kwargs_for

    pending = job.pending()
    if pending:
        model = chunks.load_model(job.options.model_request(hub_kwargs_for(job.options.model)), progress)
        facts = chunks.model_facts(model)
        done = len(job.records) - job.inputs_in(pending)
        bar = tqdm(total=len(job.records), initial=done, unit="input", desc="Encoding", disable=not progress)
        instruction, batch_size = job.options.instruction, job.options.batch_size
        # Our warnings print above the bar, not through it (other loggers keep their own handlers);
        # the forced-<gen_emb> count is said once for the whole job, not once per chunk.
        logged = logging_redirect_tqdm(loggers=[logging.getLogger("ume_plugins")])
        with bar, logged, model[0].forced_gen_emb.once_per_call():
            for index in pending:
                chunk = chunks.encode_chunk(
                    model, job.chunk_records(index), job.chunk_start(index), instruction, batch_size, bar
                )
                job.save(index, chunk, facts)
    return job.finish(pending)
