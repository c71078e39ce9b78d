"""Command line: ``ume-plugins encode`` (the main job) and ``ume-plugins build-tiny``."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ume_plugins.inputs import IMAGE_EXTENSIONS, VIDEO_EXTENSIONS

logger = logging.getLogger("ume_plugins.cli")
TEXT_EXTENSIONS = frozenset({".txt", ".md"})
_RANDOM_WEIGHTS_NOTICE = (
    "NOTE: ume-r1-tiny has RANDOM weights. Its vectors and reasoning are meaningless; "
    "they only show that the pipeline runs. Use --model ume-r1 (or ume-r1-7b) for real embeddings."
)


def read_records(source: Path) -> list[tuple[str, Any]]:
    """Inputs of a job as ``(id, raw input)`` pairs.

    A ``.jsonl`` file holds one object per line with optional ``id`` and any of ``text``,
    ``image`` (path, URL or list) and ``video`` (path, URL or list of frame paths); relative paths
    are resolved against the file's folder. A folder contributes its images, videos and
    ``.txt``/``.md`` texts (sorted, recursively), each identified by its relative path.

    Raises:
        ValueError: A malformed JSONL line, or nothing to embed.
    """
    if source.is_dir():
        records = []
        for path in sorted(p for p in source.rglob("*") if p.is_file()):
            suffix = path.suffix.lower()
            key = path.relative_to(source).as_posix()
            if suffix in IMAGE_EXTENSIONS or suffix in VIDEO_EXTENSIONS:
                records.append((key, path))
            elif suffix in TEXT_EXTENSIONS:
                records.append((key, {"text": path.read_text(encoding="utf-8")}))
    else:
        records = [_jsonl_record(line, number, source.parent) for number, line in _jsonl_lines(source)]
    if not records:
        raise ValueError(f"nothing to embed in {source}")
    return records


def _jsonl_lines(path: Path) -> list[tuple[int, str]]:
    with path.open(encoding="utf-8") as file:
        return [(number, line) for number, line in enumerate(file, start=1) if line.strip()]


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
    if isinstance(value, str) and not value.startswith(("http://", "https://", "data:", "file://")):
        path = Path(value)
        return str(path if path.is_absolute() else base / path)
    return value


def encode_job(args: argparse.Namespace) -> int:
    """Run ``ume-plugins encode``."""
    import numpy as np

    from ume_plugins.loading import load
    from ume_plugins.module import encode_with_reasoning

    records = read_records(Path(args.input))
    if args.model.strip().lower() == "ume-r1-tiny":
        print(_RANDOM_WEIGHTS_NOTICE, file=sys.stderr)
    settings = {"max_new_tokens": args.max_new_tokens} if args.max_new_tokens else {}
    model = load(args.model, mode=args.mode, device=args.device, **settings)
    mode = model[0].mode
    inputs = [raw for _, raw in records]
    encode_kwargs = {"batch_size": args.batch_size, "show_progress_bar": True, "prompt": args.instruction}
    output = Path(args.output)
    output.mkdir(parents=True, exist_ok=True)
    rows = [{"id": key} for key, _ in records]
    if mode == "discriminative":
        embeddings = model.encode(inputs, **encode_kwargs)
    else:
        result = encode_with_reasoning(model, inputs, **encode_kwargs)
        embeddings = result.embeddings
        for row, reasoning, forced in zip(rows, result.reasoning, result.forced, strict=True):
            row.update(reasoning=reasoning, gen_emb_forced=forced)
    np.save(output / "embeddings.npy", np.asarray(embeddings, dtype=np.float32))
    with (output / "records.jsonl").open("w", encoding="utf-8") as file:
        for row in rows:
            file.write(json.dumps(row, ensure_ascii=False) + "\n")
    summary = {"model": args.model, "mode": mode, "count": len(rows), "dim": int(embeddings.shape[1])}
    (output / "run.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    print(f"Embedded {len(rows)} inputs ({mode}, dim {summary['dim']}) into {output}")
    return 0


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
    encode.add_argument("--output", required=True, help="folder for embeddings.npy, records.jsonl, run.json")
    encode.add_argument("--mode", choices=["generative", "discriminative", "both"], default=None)
    encode.add_argument("--instruction", default=None, help="task instruction placed before each text")
    encode.add_argument("--batch-size", type=int, default=8)
    encode.add_argument("--max-new-tokens", type=int, default=None, help="reasoning budget (generative mode)")
    encode.add_argument("--device", default=None)
    encode.set_defaults(run=encode_job)

    tiny = commands.add_parser("build-tiny", help="write the tiny random UME-R1 checkpoint")
    tiny.add_argument("output")
    tiny.add_argument("--seed", type=int, default=0)
    tiny.set_defaults(run=build_tiny_job)
    return root


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``ume-plugins`` command."""
    args = parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        return args.run(args)
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
