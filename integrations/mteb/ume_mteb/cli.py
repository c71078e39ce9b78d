"""Command line: ``ume-mteb run``, ``ume-mteb mmeb`` and ``ume-mteb mock-run``."""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ume_mteb.modes import DEFAULT_MODE, MODES

DEFAULT_OUTPUT = "ume-mteb-results"
_LOG_FORMAT = "%(levelname)s %(name)s: %(message)s"


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``ume-mteb`` console script."""
    parser = argparse.ArgumentParser(prog="ume-mteb", description="UME-R1 on MTEB tasks, local tasks and MMEB-V2.")
    commands = parser.add_subparsers(dest="command", required=True)

    run = commands.add_parser("run", help="evaluate with mteb and write results in mteb's cache layout")
    _model_arguments(run)
    source = run.add_mutually_exclusive_group(required=True)
    source.add_argument("--tasks", nargs="+", help="mteb task names (downloads their datasets)")
    source.add_argument("--local", nargs="+", type=Path, metavar="DIR", help="local task folders (ume_mteb.local_task)")
    run.add_argument(
        "--output", type=Path, default=Path(DEFAULT_OUTPUT), help=f"results cache folder (default: {DEFAULT_OUTPUT})"
    )
    run.add_argument("--batch-size", type=int, default=8)
    run.add_argument("--overwrite", action="store_true", help="re-run tasks that already have results")

    mmeb = commands.add_parser("mmeb", help="evaluate MMEB-V2 task folders with MMEB's metrics")
    _model_arguments(mmeb)
    mmeb.add_argument("root", type=Path, help="folder holding one sub-folder per MMEB-V2 task")
    mmeb.add_argument("--tasks", nargs="+", help="only these task folders")
    mmeb.add_argument("--output", type=Path, help="write per-task scores and the summary to this JSON file")
    mmeb.add_argument("--batch-size", type=int, default=8)

    mock = commands.add_parser("mock-run", help="run mteb's offline mock tasks (what mteb asks of model PRs)")
    _model_arguments(mock)

    args = parser.parse_args(argv)
    _configure_output(args.verbose, quiet_datasets=args.command == "mock-run")
    try:
        return {"run": _run, "mmeb": _mmeb, "mock-run": _mock_run}[args.command](args)
    except ValueError as error:  # bad task folders or names, a missing model folder, an unreachable hub
        print(f"error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


def _configure_output(verbose: bool, *, quiet_datasets: bool) -> None:
    """Our own INFO lines and every warning; the hosts' INFO logging (mteb, datasets, ...) only with -v.

    A mock run logs about 800 INFO lines from mteb and draws a progress bar per mock dataset.
    """
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, format=_LOG_FORMAT)
    logging.getLogger("ume_mteb").setLevel(logging.INFO)
    if quiet_datasets and not verbose:
        import datasets

        datasets.disable_progress_bars()


def _model_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-v", "--verbose", action="store_true", help="show mteb's and other hosts' INFO logging")
    parser.add_argument("--model", default="ume-r1", help="alias, hub id or folder (default: ume-r1)")
    parser.add_argument("--mode", choices=MODES, default=DEFAULT_MODE)
    parser.add_argument("--device", help="cuda, cpu, mps (default: the best available)")
    parser.add_argument("--max-new-tokens", type=int, help="generative reasoning budget (default: the model's)")


def _load(args: argparse.Namespace):
    from ume_mteb.encoder import load_model
    from ume_plugins.hub_access import hub_kwargs_for

    generation_kwargs = {"max_new_tokens": args.max_new_tokens} if args.max_new_tokens else None
    # A hub model that cannot be had fails here in seconds, with what to do, not after retries.
    hub = hub_kwargs_for(args.model)
    return load_model(args.model, mode=args.mode, device=args.device, generation_kwargs=generation_kwargs, **hub)


def _warned_once(model) -> contextlib.AbstractContextManager:
    """The run's rollouts that lacked ``<gen_emb>``, counted over every encode call mteb makes and said once."""
    return model.model[0].forced_gen_emb.once_per_call()


def _run(args: argparse.Namespace) -> int:
    import mteb

    from ume_mteb.local_task import evaluate_local, local_task

    # Task names and folders are checked before the model loads (minutes for a real checkpoint).
    tasks = None
    if args.tasks:
        try:
            tasks = mteb.get_tasks(tasks=args.tasks)
        except KeyError as error:
            raise ValueError(f"mteb has no such task: {str(error.args[0]).removeprefix('KeyError: ')}") from None
    local_tasks = [local_task(folder) for folder in args.local or ()]
    model = _load(args)
    cache = mteb.ResultCache(args.output)
    overwrite = "always" if args.overwrite else "only-missing"
    encode_kwargs = {"batch_size": args.batch_size}
    with _warned_once(model):
        if args.local:
            results = [
                evaluate_local(model, task, cache=cache, overwrite_strategy=overwrite, encode_kwargs=encode_kwargs)
                for task in local_tasks
            ]
            failed = False
        else:
            evaluation = mteb.evaluate(
                model, tasks, cache=cache, overwrite_strategy=overwrite, encode_kwargs=encode_kwargs
            )
            results, failed = evaluation.task_results, bool(evaluation.exceptions)
    for result in results:
        path = cache.get_task_result_path(result.task_name, model.mteb_model_meta)
        print(f"{result.task_name}: {result.get_score():.4f} ({path})")
    return 1 if failed else 0


def _mmeb(args: argparse.Namespace) -> int:
    from ume_mteb.mmeb import evaluate_mmeb, format_table, reported_for, summarise, task_folders

    names = task_folders(args.root, args.tasks)  # before the model loads
    model = _load(args)
    with _warned_once(model):
        scores = evaluate_mmeb(model, args.root, names, batch_size=args.batch_size)
    meta = model.mteb_model_meta
    reported = reported_for(meta.name) if model.mode == DEFAULT_MODE and not meta.experiment_kwargs else None
    for name, score in scores.items():
        print(f"{name}: {score:.1f}")
    print(format_table(scores, reported))
    if args.output:
        record: dict[str, Any] = {"model": meta.model_name_with_experiment, "revision": meta.revision}
        record |= {"mode": model.mode, "scores": scores, "summary": summarise(scores)}
        args.output.write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    return 0


def _mock_run(args: argparse.Namespace) -> int:
    import mteb

    model = _load(args)
    with _warned_once(model):
        results = mteb.mock_run(model)
    print(results.to_markdown())
    return 0 if results.all_passed else 1


if __name__ == "__main__":
    sys.exit(main())
