"""Encode jobs on a Ray cluster: one model replica per actor, the same output folder as a local job.

Needs ``pip install "ume-plugins[ray]"``. The driver (this process) reads the inputs and owns the
output folder exactly as a local job does (:class:`~ume_plugins.encode_job.Job`); Ray Data only
computes the pending chunks. Each chunk is one row of a Ray Dataset, embedded whole by one actor
with :func:`~ume_plugins.chunks.encode_chunk` (the function the local job calls), so it is batched
and computed as it would be locally, and comes back to the driver, which writes it. A killed job
therefore resumes from its finished chunks, locally or on Ray, and the final files are the same
bytes as an uninterrupted local run on the same hardware.

Actors take one GPU each when the cluster has GPUs, else ``cpus_per_actor`` CPUs (torch then uses
that many threads). Inputs are read by the actors: files named in the inputs must be visible at
the same path on every node (a shared file system), or be URLs or Parquet bytes.
"""

from __future__ import annotations

import contextlib
import logging
import pickle
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from ume_plugins import chunks
from ume_plugins.encode_job import Job, JobOptions, JobResult

RAY_REQUIREMENT = 'pip install "ume-plugins[ray]"'
logger = logging.getLogger(__name__)


class RayUnavailableError(ImportError):
    """Ray is not installed."""


class RayJobError(RuntimeError):
    """The cluster could not be joined, or an actor failed (its traceback is in the log above)."""


def encode_dataset(
    source: str | Path,
    output: str | Path,
    model: str = "ume-r1",
    *,
    mode: str | None = None,
    instruction: str | None = None,
    batch_size: int = 8,
    chunk_size: int = 64,
    max_length: int | None = None,
    max_new_tokens: int | None = None,
    allow_network: bool = True,
    address: str | None = None,
    actors: int | None = None,
    cpus_per_actor: int = 1,
    progress: bool = True,
) -> JobResult:
    """Embed a JSONL file, a Parquet file or folder, or a folder of media on a Ray cluster.

    Args:
        source: The inputs (see :func:`~ume_plugins.records.read_records`).
        output: The job's output folder (see :mod:`ume_plugins.jobs`); re-running resumes it.
        model: Alias, hub id or folder.
        mode: ``"generative"``, ``"discriminative"`` or ``"both"``; None keeps the checkpoint's.
        instruction: Task instruction placed before each text.
        batch_size: Inputs per forward pass.
        chunk_size: Inputs per saved chunk, and per task an actor receives.
        max_length: Longest prompt in tokens; None keeps the checkpoint's.
        max_new_tokens: Reasoning budget; None keeps the checkpoint's.
        allow_network: Fetch http(s) URL inputs (else they are recorded as errors).
        address: The cluster to join when Ray is not initialised yet (``ray.init(address)``: None
            joins ``RAY_ADDRESS`` or a cluster started on this machine, else starts one).
        actors: Model replicas; default: one per GPU of the cluster, or one per
            ``cpus_per_actor`` CPUs when it has none (never more than the pending chunks).
        cpus_per_actor: CPUs (and torch threads) of each actor.
        progress: Show a progress bar.

    Returns:
        What the finished output folder holds, and which chunks this run computed.
    """
    options = JobOptions(
        input=Path(source),
        output=Path(output),
        model=model,
        mode=mode,
        instruction=instruction,
        batch_size=batch_size,
        chunk_size=chunk_size,
        max_length=max_length,
        max_new_tokens=max_new_tokens,
        allow_network=allow_network,
    )
    return run_on_ray(Job(options), address=address, actors=actors, cpus_per_actor=cpus_per_actor, progress=progress)


def run_on_ray(
    job: Job, *, address: str | None = None, actors: int | None = None, cpus_per_actor: int = 1, progress: bool = True
) -> JobResult:
    """Compute a planned job's pending chunks on a Ray cluster, then assemble its output.

    Raises:
        RayUnavailableError: Ray is not installed (the message is the pip line).
        RayJobError: The cluster cannot be joined, or an actor failed (e.g. its model did not load).
        ~ume_plugins.hub_access.HubUnreachableError: The model's hub cannot be reached.
    """
    pending = job.pending()
    if not pending:
        return job.finish()
    ray = import_ray()
    from ume_plugins.hub_access import hub_kwargs_for

    request = job.options.model_request(hub_kwargs_for(job.options.model))
    started = not ray.is_initialized()
    if started:
        try:
            ray.init(address=address, logging_level=logging.WARNING)
        except ConnectionError as error:
            raise RayJobError(f"cannot join the Ray cluster at {address or 'RAY_ADDRESS'}: {error}") from None
    try:
        resources = ray.cluster_resources()
        gpus = int(resources.get("GPU", 0))
        size = actors or (gpus or int(resources.get("CPU", 1) // cpus_per_actor))
        size = max(1, min(size, len(pending)))
        logger.info("Encoding %d chunks on %d %s actors", len(pending), size, "GPU" if gpus else "CPU")
        with _quiet_ray_data(ray):
            _compute(ray, job, pending, request, size, gpus > 0, cpus_per_actor, progress)
    except ray.exceptions.RayError as error:
        # Ray has logged the traceback; its last line names the actor's own exception.
        raise RayJobError(f"the Ray job failed: {str(error).strip().splitlines()[-1]}") from None
    finally:
        if started:
            ray.shutdown()
    return job.finish(pending)


def import_ray() -> Any:
    """The ``ray`` module (with Ray Data).

    Raises:
        RayUnavailableError: Ray or Ray Data is not installed; the message is the pip line.
    """
    try:
        import ray
        import ray.data
    except ImportError:
        raise RayUnavailableError(f"running on Ray needs Ray Data: {RAY_REQUIREMENT}") from None
    return ray


def _compute(
    ray: Any,
    job: Job,
    pending: Sequence[int],
    request: chunks.ModelRequest,
    size: int,
    on_gpus: bool,
    cpus_per_actor: int,
    progress: bool,
) -> None:
    from tqdm import tqdm

    # A chunk travels as one opaque row: Arrow would otherwise widen each input dict to the union
    # of all inputs' keys (adding None fields) and turn paths into strings.
    rows = [{"chunk": index, "records": pickle.dumps(list(job.chunk_records(index)))} for index in pending]
    options = job.options
    results = ray.data.from_items(rows, override_num_blocks=len(rows)).map_batches(
        _ChunkEncoder,
        batch_size=1,
        compute=ray.data.ActorPoolStrategy(size=size),
        num_gpus=1 if on_gpus else 0,
        num_cpus=cpus_per_actor,
        fn_constructor_kwargs={
            "request": request,
            "instruction": options.instruction,
            "batch_size": options.batch_size,
            "chunk_size": options.chunk_size,
            "threads": cpus_per_actor,
        },
    )
    done = len(job.records) - job.inputs_in(pending)
    with tqdm(total=len(job.records), initial=done, unit="input", desc="Encoding", disable=not progress) as bar:
        for batch in results.iter_batches(batch_size=None, batch_format="default"):
            for index, blob in zip(batch["chunk"], batch["result"], strict=True):
                chunk, facts = pickle.loads(blob)
                job.save(int(index), chunk, facts)
                bar.update(len(job.chunk_records(int(index))))


class _ChunkEncoder:
    """One model replica in a Ray actor; each call embeds whole chunks."""

    def __init__(
        self, request: chunks.ModelRequest, instruction: str | None, batch_size: int, chunk_size: int, threads: int
    ) -> None:
        import torch

        torch.set_num_threads(threads)
        self.model = chunks.load_model(request, progress=False)
        self.facts = chunks.model_facts(self.model)
        self.instruction = instruction
        self.batch_size = batch_size
        self.chunk_size = chunk_size

    def __call__(self, batch: dict[str, Any]) -> dict[str, list[Any]]:
        results = []
        for index, blob in zip(batch["chunk"], batch["records"], strict=True):
            start = int(index) * self.chunk_size
            chunk = chunks.encode_chunk(self.model, pickle.loads(blob), start, self.instruction, self.batch_size)
            results.append(pickle.dumps((chunk, self.facts)))
        return {"chunk": list(batch["chunk"]), "result": results}


@contextlib.contextmanager
def _quiet_ray_data(ray: Any) -> Iterator[None]:
    """One progress display (ours, counting inputs) and no execution chatter from Ray Data, for one run."""
    context = ray.data.DataContext.get_current()
    # Ray Data says once that its bars are off, inviting the user to turn them back on.
    levels = {"ray.data": logging.WARNING, "ray.data._internal.progress": logging.ERROR}
    saved_levels = {name: logging.getLogger(name).level for name in levels}
    saved_flags = (context.enable_progress_bars, context.print_on_execution_start)
    context.enable_progress_bars = context.print_on_execution_start = False
    for name, level in levels.items():
        logging.getLogger(name).setLevel(level)
    try:
        yield
    finally:
        context.enable_progress_bars, context.print_on_execution_start = saved_flags
        for name, level in saved_levels.items():
            logging.getLogger(name).setLevel(level)
