"""Command line: ``ume-plugins encode`` (the main job) and ``ume-plugins build-tiny``.

``encode`` never lets one input cost the rest of the job, nor a crash the finished work: an input
that cannot be read is skipped and recorded in ``errors.jsonl`` (the exit status is 1 only when
every input was), and the output is written in chunks that a re-run of the same command resumes
from (see :mod:`ume_plugins.encode_job`), in this process or on a Ray cluster (``--ray``, see
:mod:`ume_plugins.distributed`).

This module imports nothing heavy: ``--help`` and ``--version`` answer at once, and torch and
the host libraries load only when a command runs.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

_LOCAL_RAY = ""  # ``--ray`` without an address
_RANDOM_WEIGHTS_NOTICE = (
    "NOTE: ume-r1-tiny has RANDOM weights. Its vectors and reasoning are meaningless; "
    "they only show that the pipeline runs. Use --model ume-r1 (or ume-r1-7b) for real embeddings."
)


def encode_command(args: argparse.Namespace) -> int:
    """Run ``ume-plugins encode``: resume or start the job, then assemble its output."""
    from ume_plugins.encode_job import Job, JobOptions, run_local

    # A local run loads the model here, and the module says it once; Ray actors load it out of sight.
    if args.ray is not None and args.model.strip().lower() == "ume-r1-tiny":
        print(_RANDOM_WEIGHTS_NOTICE, file=sys.stderr)
    options = JobOptions(
        input=Path(args.input),
        output=Path(args.output),
        model=args.model,
        mode=args.mode,
        instruction=args.instruction,
        batch_size=args.batch_size,
        chunk_size=args.chunk_size,
        max_length=args.max_length,
        max_new_tokens=args.max_new_tokens,
        allow_network=not args.no_network,
        url_timeout=args.url_timeout,
        max_url_bytes=args.max_url_bytes,
        device=args.device,
    )
    job = Job(options)
    if job.is_finished:
        job.finish()
        print(f"Nothing to do: {options.output} already holds this job's finished output")
        return 0
    done = job.chunk_count - len(job.pending())
    if done:
        print(f"Resuming: {done} of {job.chunk_count} chunks already done", file=sys.stderr)
    if args.ray is None:
        result = run_local(job, progress=not args.no_progress)
    else:
        from ume_plugins.distributed import RayJobError, RayUnavailableError, run_on_ray

        address = args.ray if args.ray != _LOCAL_RAY else None
        try:
            result = run_on_ray(
                job,
                address=address,
                actors=args.actors,
                cpus_per_actor=args.cpus_per_actor,
                progress=not args.no_progress,
            )
        except (RayUnavailableError, RayJobError) as error:
            print(f"error: {error}", file=sys.stderr)
            return 2 if isinstance(error, RayUnavailableError) else 1
    skipped = f"; skipped {result.skipped} (see errors.jsonl)" if result.skipped else ""
    disc = "; discriminative vectors in disc_embeddings.npy" if result.mode == "both" else ""
    print(f"Embedded {result.count} inputs ({result.mode}, dim {result.dim}) into {result.output}{skipped}{disc}")
    if result.skipped and not result.count:  # every input failed: a script must not read this as success
        print(f"error: none of the {result.skipped} inputs could be embedded (see errors.jsonl)", file=sys.stderr)
        return 1
    return 0


def build_tiny_command(args: argparse.Namespace) -> int:
    """Run ``ume-plugins build-tiny``."""
    from ume_plugins.tiny import build_tiny_checkpoint

    path = build_tiny_checkpoint(args.output, seed=args.seed)
    print(f"Wrote a tiny random UME-R1 checkpoint to {path}")
    return 0


def parser() -> argparse.ArgumentParser:
    """The ``ume-plugins`` argument parser."""
    from ume_plugins import __version__
    from ume_plugins.fetch import FetchPolicy
    from ume_plugins.settings import EmbeddingSettings

    root = argparse.ArgumentParser(prog="ume-plugins", description="UME-R1 multimodal embeddings")
    root.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = root.add_subparsers(dest="command", required=True)

    encode = commands.add_parser("encode", help="embed a JSONL file, Parquet data, or a folder of images/videos/texts")
    encode.add_argument("input", help="a .jsonl file, a .parquet file or folder, or a folder of media")
    encode.add_argument("--model", default="ume-r1", help="alias, hub id or path (default: ume-r1)")
    encode.add_argument(
        "--output", required=True, help="folder for embeddings.npy, records.jsonl, errors.jsonl, run.json"
    )
    encode.add_argument(
        "--mode",
        choices=["generative", "discriminative", "both"],
        default=None,
        help="both: also writes the discriminative vectors to disc_embeddings.npy (default: the model's)",
    )
    encode.add_argument("--instruction", default=None, help="task instruction placed before each text")
    encode.add_argument(
        "--batch-size", type=_positive, default=8, help="inputs per forward pass (default: %(default)s)"
    )
    encode.add_argument(
        "--chunk-size",
        type=_positive,
        default=64,
        help="inputs per saved chunk: the most work a crash can lose (default: %(default)s)",
    )
    encode.add_argument(
        "--max-new-tokens",
        type=_positive,
        default=None,
        help=f"reasoning budget in tokens (default: the model's, {EmbeddingSettings.max_new_tokens} for UME-R1)",
    )
    encode.add_argument(
        "--max-length",
        type=_positive,
        default=None,
        help="longest prompt in tokens; longer texts are truncated (default: what the reasoning budget leaves)",
    )
    encode.add_argument("--no-network", action="store_true", help="refuse http(s) URL inputs (they are skipped)")
    encode.add_argument(
        "--url-timeout",
        type=float,
        default=None,
        help=f"seconds allowed for URL connects and reads (default: {FetchPolicy.timeout:g})",
    )
    encode.add_argument(
        "--max-url-bytes",
        type=_positive,
        default=None,
        help=f"largest URL body in bytes (default: {FetchPolicy.max_bytes})",
    )
    encode.add_argument("--no-progress", action="store_true", help="hide the progress bars")
    encode.add_argument("--device", default=None, help="device of a local run (default: the best available)")
    ray = encode.add_argument_group("Ray cluster (needs pip install 'ume-plugins[ray]')")
    ray.add_argument(
        "--ray",
        nargs="?",
        const=_LOCAL_RAY,
        default=None,
        metavar="ADDRESS",
        help="run on a Ray cluster: ADDRESS, else RAY_ADDRESS or a cluster started here, else a new local one",
    )
    ray.add_argument("--actors", type=_positive, default=None, help="model replicas (default: one per GPU)")
    ray.add_argument("--cpus-per-actor", type=_positive, default=1, help="CPUs per actor on clusters without GPUs")
    encode.set_defaults(run=encode_command)

    tiny = commands.add_parser("build-tiny", help="write the tiny random UME-R1 checkpoint")
    tiny.add_argument("output")
    tiny.add_argument("--seed", type=int, default=0)
    tiny.set_defaults(run=build_tiny_command)
    return root


def _positive(value: str) -> int:
    number = int(value)
    if number < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {value}")
    return number


class _StderrHandler(logging.StreamHandler):
    """Writes to ``sys.stderr`` as it is at each record (progress bars and tests swap it)."""

    @property
    def stream(self):  # noqa: D102
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:
        pass


def configure_logging() -> None:
    """Show our warnings on stderr, once.

    Only our logger gets a handler: transformers and huggingface_hub print through their own
    handlers, so a handler on the root logger would print their records a second time.
    """
    package = logging.getLogger("ume_plugins")
    if not any(isinstance(handler, _StderrHandler) for handler in package.handlers):
        handler = _StderrHandler()
        handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
        package.addHandler(handler)
    package.setLevel(logging.WARNING)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``ume-plugins`` command."""
    arguments = parser()
    args = arguments.parse_args(argv)
    if getattr(args, "ray", None) is not None and args.device is not None:
        arguments.error("--device applies to local runs; Ray actors use their GPU, or the CPU")
    configure_logging()
    try:
        return args.run(args)
    except ValueError as error:  # bad input, a foreign output folder, an unreachable hub
        print(f"error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: re-run the same command to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
