"""Command line: ``ume-plugins encode`` (the main job) and ``ume-plugins build-tiny``.

``encode`` never lets one input cost the rest of the job, nor a crash the finished work: an input
that cannot be read is skipped and recorded in ``errors.jsonl``, and the output is written in
chunks that a re-run of the same command resumes from (see :mod:`ume_plugins.jobs`).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import math
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from ume_plugins.errors import UMEInputError
from ume_plugins.inputs import InputSpec, parse
from ume_plugins.jobs import SUMMARY, Chunk, JobFolder
from ume_plugins.records import TextFile, read_records

if TYPE_CHECKING:
    from sentence_transformers import SentenceTransformer

logger = logging.getLogger("ume_plugins.cli")
_RANDOM_WEIGHTS_NOTICE = (
    "NOTE: ume-r1-tiny has RANDOM weights. Its vectors and reasoning are meaningless; "
    "they only show that the pipeline runs. Use --model ume-r1 (or ume-r1-7b) for real embeddings."
)


def encode_job(args: argparse.Namespace) -> int:
    """Run ``ume-plugins encode``: resume or start the job, then assemble its output."""
    from ume_plugins.loading import load

    source = Path(args.input)
    records = read_records(source)
    if args.model.strip().lower() == "ume-r1-tiny":
        print(_RANDOM_WEIGHTS_NOTICE, file=sys.stderr)
    settings: dict[str, Any] = {"max_new_tokens": args.max_new_tokens, "max_length": args.max_length}
    settings = {key: value for key, value in settings.items() if value is not None}
    if args.no_network:
        settings["allow_network"] = False
    if args.url_timeout is not None:
        settings["url_timeout"] = args.url_timeout
    if args.max_url_bytes is not None:
        settings["max_url_bytes"] = args.max_url_bytes
    model = load(args.model, mode=args.mode, device=args.device, **settings)
    module = model[0]
    dim = module.get_embedding_dimension()
    chunk_count = math.ceil(len(records) / args.chunk_size)
    output = Path(args.output)
    folder = JobFolder(output, _job_definition(args, source, records, model), chunk_count, dim)
    if folder.is_finished:
        folder.clean()
        print(f"Nothing to do: {output} already holds this job's finished output")
        return 0
    done = folder.finished_chunks()
    already = sum(len(_chunk_slice(records, index, args.chunk_size)) for index in done)
    if done:
        print(f"Resuming: {len(done)} of {chunk_count} chunks already done", file=sys.stderr)
    bar = tqdm(total=len(records), initial=already, unit="input", desc="Encoding", disable=args.no_progress)
    with bar, logging_redirect_tqdm():
        for index in sorted(set(range(chunk_count)) - done):
            start = index * args.chunk_size
            chunk = encode_chunk(
                model, _chunk_slice(records, index, args.chunk_size), start, args.instruction, args.batch_size, bar
            )
            folder.save_chunk(index, chunk)
    folder.assemble({"model": args.model, "mode": module.mode, "dim": dim, "inputs": len(records)})
    folder.clean()
    summary = json.loads((output / SUMMARY).read_text(encoding="utf-8"))
    skipped = f"; skipped {summary['skipped']} (see errors.jsonl)" if summary["skipped"] else ""
    print(f"Embedded {summary['count']} inputs ({module.mode}, dim {dim}) into {output}{skipped}")
    return 0


def encode_chunk(
    model: SentenceTransformer,
    records: Sequence[tuple[str, Any]],
    start: int,
    instruction: str | None,
    batch_size: int,
    progress: tqdm,
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
        The slice's records, vectors and skipped inputs, in input order.
    """
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
    progress.update(len(errors))
    # Inputs of similar size share a batch, so little is padded; the order is a pure function of
    # the chunk, so a resumed chunk is batched (and computed) exactly as in an uninterrupted run.
    order = sorted(parsed, key=lambda index: -parsed[index].size)
    results: dict[int, tuple[Any, dict[str, Any]]] = {}
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
                progress.update(1)
                continue
            progress.update(len(pending))
            break
    ids = {index: key for index, (key, _) in enumerate(records, start=start)}
    embedded = sorted(results)
    vectors = np.stack([results[index][0] for index in embedded]) if embedded else np.zeros((0, 0))
    return Chunk(
        records=[{"id": ids[index], **results[index][1]} for index in embedded],
        errors=[{"index": index, "id": ids[index], "error": errors[index]} for index in sorted(errors)],
        vectors=vectors.reshape(len(embedded), model[0].get_embedding_dimension()),
    )


def _encode_batch(
    model: SentenceTransformer, specs: list[InputSpec], instruction: str | None
) -> dict[int, tuple[Any, dict[str, Any]]]:
    """Vectors (and reasoning, in generative mode) of one batch, by job index.

    Each spec carries its index in the job, so errors and warnings name that index.
    """
    from ume_plugins.reasoning import encode_with_reasoning

    kwargs = {"prompt": instruction, "batch_size": len(specs), "show_progress_bar": False}
    if model[0].mode == "discriminative":
        vectors = model.encode(specs, **kwargs)
        extras: list[dict[str, Any]] = [{} for _ in specs]
    else:
        result = encode_with_reasoning(model, specs, **kwargs)
        vectors = result.embeddings
        extras = [
            {"reasoning": reasoning, "gen_emb_forced": forced}
            for reasoning, forced in zip(result.reasoning, result.forced, strict=True)
        ]
    return {spec.index: (vector, extra) for spec, vector, extra in zip(specs, vectors, extras, strict=True)}


def _chunk_slice(records: Sequence[tuple[str, Any]], index: int, chunk_size: int) -> Sequence[tuple[str, Any]]:
    return records[index * chunk_size : (index + 1) * chunk_size]


def _job_definition(
    args: argparse.Namespace, source: Path, records: list[tuple[str, Any]], model: SentenceTransformer
) -> dict[str, Any]:
    """Everything that decides the job's output bytes; a folder made under another one is refused."""
    from ume_plugins import __version__

    module = model[0]
    listing = json.dumps(records, default=str).encode("ascii")
    definition = {
        "input": str(source.resolve()),
        "inputs": len(records),
        "inputs_sha256": hashlib.sha256(listing).hexdigest(),
        "model": args.model,
        "settings": {**module.get_config_dict(), **module.policy.as_options()},
        "instruction": args.instruction,
        "batch_size": args.batch_size,
        "chunk_size": args.chunk_size,
        "device": module.model.device.type,
        "dtype": str(module.model.dtype),
        "ume_plugins": __version__,
    }
    # As it reads back from the manifest, so that a comparison sees no tuple-versus-list difference.
    return json.loads(json.dumps(definition, default=str))


def build_tiny_job(args: argparse.Namespace) -> int:
    """Run ``ume-plugins build-tiny``."""
    from ume_plugins.tiny import build_tiny_checkpoint

    path = build_tiny_checkpoint(args.output, seed=args.seed)
    print(f"Wrote a tiny random UME-R1 checkpoint to {path}")
    return 0


def parser() -> argparse.ArgumentParser:
    """The ``ume-plugins`` argument parser."""
    root = argparse.ArgumentParser(prog="ume-plugins", description="UME-R1 multimodal embeddings")
    commands = root.add_subparsers(dest="command", required=True)

    encode = commands.add_parser("encode", help="embed a JSONL file or a folder of images/videos/texts")
    encode.add_argument("input", help="a .jsonl file or a folder")
    encode.add_argument("--model", default="ume-r1", help="alias, hub id or path (default: ume-r1)")
    encode.add_argument(
        "--output", required=True, help="folder for embeddings.npy, records.jsonl, errors.jsonl, run.json"
    )
    encode.add_argument("--mode", choices=["generative", "discriminative", "both"], default=None)
    encode.add_argument("--instruction", default=None, help="task instruction placed before each text")
    encode.add_argument("--batch-size", type=_positive, default=8)
    encode.add_argument(
        "--chunk-size", type=_positive, default=64, help="inputs per saved chunk: the most work a crash can lose"
    )
    encode.add_argument("--max-new-tokens", type=_positive, default=None, help="reasoning budget (generative mode)")
    encode.add_argument(
        "--max-length", type=_positive, default=None, help="longest prompt in tokens; longer texts are truncated"
    )
    encode.add_argument("--no-network", action="store_true", help="refuse http(s) URL inputs (they are skipped)")
    encode.add_argument("--url-timeout", type=float, default=None, help="seconds allowed for URL connects and reads")
    encode.add_argument("--max-url-bytes", type=_positive, default=None, help="largest URL body accepted")
    encode.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    encode.add_argument("--device", default=None)
    encode.set_defaults(run=encode_job)

    tiny = commands.add_parser("build-tiny", help="write the tiny random UME-R1 checkpoint")
    tiny.add_argument("output")
    tiny.add_argument("--seed", type=int, default=0)
    tiny.set_defaults(run=build_tiny_job)
    return root


def _positive(value: str) -> int:
    number = int(value)
    if number < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {value}")
    return number


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``ume-plugins`` command."""
    args = parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        return args.run(args)
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: re-run the same command to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
