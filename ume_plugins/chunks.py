"""Loading the model for a job and embedding one chunk: a job's only contact with the core.

The local job (:mod:`ume_plugins.encode_job`) and the Ray path (:mod:`ume_plugins.distributed`)
both load the model with :func:`load_model`, describe it with :func:`model_facts` and embed with
:func:`encode_chunk`, so a chunk is computed the same way wherever it runs. Only this file knows
the core's input API (decoding one raw input, naming an input's index in errors).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from ume_plugins.errors import UMEInputError
from ume_plugins.jobs import Chunk
from ume_plugins.records import Record, TextFile

if TYPE_CHECKING:
    from sentence_transformers import SentenceTransformer
    from tqdm import tqdm

    from ume_plugins.inputs import InputSpec

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ModelRequest:
    """What to load for a job.

    Attributes:
        name: Alias, hub id or folder.
        mode: Embedding mode; None keeps the checkpoint's.
        device: Device; None picks the best available.
        settings: Module settings given by the caller (``max_length``, ``max_new_tokens``, ...).
        hub_kwargs: Hub options (``local_files_only``) decided by :mod:`ume_plugins.hub_access`.
    """

    name: str
    mode: str | None = None
    device: str | None = None
    settings: dict[str, Any] = field(default_factory=dict)
    hub_kwargs: dict[str, Any] = field(default_factory=dict)


def load_model(request: ModelRequest, progress: bool = True) -> SentenceTransformer:
    """Load the job's model; ``progress=False`` also hides transformers' weight-loading bar."""
    from transformers.utils import logging as transformers_logging

    from ume_plugins.loading import load

    def loaded() -> SentenceTransformer:
        return load(request.name, mode=request.mode, device=request.device, **request.settings, **request.hub_kwargs)

    if progress or not transformers_logging.is_progress_bar_enabled():
        return loaded()
    transformers_logging.disable_progress_bar()  # the public switch; it covers the hub's bars too
    try:
        return loaded()
    finally:
        transformers_logging.enable_progress_bar()


def model_facts(model: SentenceTransformer) -> dict[str, Any]:
    """What, besides the request, decides a job's output bytes: recorded in its manifest.

    The hardware is part of it: CPU kernels reduce differently with another thread count, and a
    GPU of another model runs other kernels, so a chunk computed elsewhere would not be
    byte-identical.
    """
    import torch

    module = model[0]
    device = module.model.device
    facts: dict[str, Any] = {
        "mode": module.mode,
        "dim": module.get_embedding_dimension(),
        "settings": module.get_config_dict(),
        "device": device.type,
        "dtype": str(module.model.dtype),
    }
    if device.type == "cpu":
        facts["threads"] = torch.get_num_threads()
    elif device.type == "cuda":
        facts["accelerator"] = torch.cuda.get_device_name(device)
    return facts


def encode_chunk(
    model: SentenceTransformer,
    records: Sequence[Record],
    start: int,
    instruction: str | None,
    batch_size: int,
    progress: tqdm | None = None,
) -> Chunk:
    """Embed one slice of the job's inputs, skipping (and recording) those that cannot be read.

    Args:
        model: The UME-R1 SentenceTransformer.
        records: The slice's ``(id, raw input)`` pairs.
        start: Index of the slice's first input in the job.
        instruction: Task instruction.
        batch_size: Inputs per forward pass.
        progress: Advanced by one per input done or skipped.

    Returns:
        The slice's records, vectors (and discriminative vectors in mode ``"both"``) and skipped
        inputs, in input order.
    """
    advance = progress.update if progress is not None else (lambda count: None)
    parsed, errors = _parse(model, records, start)
    advance(len(errors))
    # Inputs of similar size share a batch, so little is padded; the order is a pure function of
    # the chunk, so a resumed chunk is batched (and computed) exactly as in an uninterrupted run.
    order = sorted(parsed, key=lambda index: -parsed[index].size)
    results: dict[int, _Embedded] = {}
    for first in range(0, len(order), batch_size):
        pending = order[first : first + batch_size]
        while pending:
            try:
                results.update(_encode_batch(model, [parsed[index] for index in pending], instruction))
            except UMEInputError as error:
                if error.index not in pending:
                    raise
                pending.remove(error.index)
                errors[error.index] = error.reason
                advance(1)
                continue
            advance(len(pending))
            break
    ids = {index: key for index, (key, _) in enumerate(records, start=start)}
    embedded = sorted(results)
    dim = model[0].get_embedding_dimension()

    def stacked(vectors: list[np.ndarray]) -> np.ndarray:
        return np.stack(vectors).reshape(len(embedded), dim) if vectors else np.zeros((0, dim), np.float32)

    with_disc = model[0].mode == "both"
    return Chunk(
        records=[{"id": ids[index], **results[index].extras} for index in embedded],
        errors=[{"index": index, "id": ids[index], "error": errors[index]} for index in sorted(errors)],
        vectors=stacked([results[index].vector for index in embedded]),
        disc_vectors=stacked([results[index].disc_vector for index in embedded]) if with_disc else None,
    )


@dataclass(frozen=True)
class _Embedded:
    vector: np.ndarray
    extras: dict[str, Any]
    disc_vector: np.ndarray | None


def _parse(
    model: SentenceTransformer, records: Sequence[Record], start: int
) -> tuple[dict[int, InputSpec], dict[int, str]]:
    """Parsed inputs and the reasons of those that could not be read, by job index."""
    from ume_plugins.inputs import parse

    policy = model[0].policy
    parsed: dict[int, InputSpec] = {}
    errors: dict[int, str] = {}
    for index, (_, raw) in enumerate(records, start=start):
        try:
            parsed[index] = parse(raw.load() if isinstance(raw, TextFile) else raw, index, policy)
        except UMEInputError as error:
            errors[index] = error.reason
        except Exception as error:  # one input must never cost the job; the row keeps the details
            logger.warning("Input %d: unexpected %s while reading", index, type(error).__name__, exc_info=True)
            errors[index] = f"{type(error).__name__}: {error}"
    return parsed, errors


def _encode_batch(model: SentenceTransformer, specs: list[InputSpec], instruction: str | None) -> dict[int, _Embedded]:
    """Vectors (and reasoning, in generative mode) of one batch, by job index.

    Each spec carries its index in the job, so errors and warnings name that index.
    """
    module = model[0]
    kwargs = {"prompt": instruction, "batch_size": len(specs), "show_progress_bar": False}
    if module.mode == "discriminative":
        vectors = model.encode(specs, **kwargs)
        return {spec.index: _Embedded(vector, {}, None) for spec, vector in zip(specs, vectors, strict=True)}
    rows = model.encode(specs, output_value=None, **kwargs)
    return {
        spec.index: _Embedded(
            vector=_numpy(row["sentence_embedding"]),
            extras={
                "reasoning": module.decode_reasoning(row["generated_ids"]),
                "gen_emb_forced": bool(row["gen_emb_forced"]),
            },
            disc_vector=_numpy(row["disc_embedding"]) if "disc_embedding" in row else None,
        )
        for spec, row in zip(specs, rows, strict=True)
    }


def _numpy(vector: Any) -> np.ndarray:
    return vector.float().cpu().numpy()
