"""MMEB-V2 on local data, scored with MMEB's metrics, summarised as in the UME-R1 paper.

MMEB-V2 is not an mteb benchmark. Its eval ranks, for each query, a list of candidates by cosine
similarity and reports hit@1 (image and video tasks) or nDCG@5 with linear gains (visual
documents). Each task is a folder under the root, named as in :data:`TASKS`::

    <root>/MSR-VTT/queries.jsonl     {"id": "q1", "text": "...", "image"/"video": ..., "positives": ["c7"],
                                      "relevance": [1.0], "candidates": ["c1", ...], "instruction": "..."}
    <root>/MSR-VTT/candidates.jsonl  {"id": "c7", "video": "videos/7.mp4", "instruction": "..."}

``positives`` are the gold candidates, most relevant first; ``relevance`` (optional, default 1 each)
grades them for nDCG; ``candidates`` (optional, default all) restricts a query's ranking as MMEB's
per-query candidate lists do; ``instruction`` (optional) overrides the task's instruction for that
row, which is how image tasks carry their per-sample instructions. Relative paths are resolved
against the file. The tasks' own instructions are the core's table
(:data:`ume_plugins.prompts.MMEB_V2_INSTRUCTIONS`); ``mmeb_v2_tasks.json`` gives each task's
modality and meta-task, and the paper's scores.
"""

from __future__ import annotations

import difflib
import json
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ume_plugins.prompts import MMEB_V2_INSTRUCTIONS, TaskInstructions

if TYPE_CHECKING:
    from ume_mteb.encoder import UMER1Encoder

logger = logging.getLogger(__name__)

_DATA = json.loads(resources.files("ume_mteb").joinpath("mmeb_v2_tasks.json").read_text(encoding="utf-8"))
CATEGORIES = {
    "image": ("CLS", "QA", "RET", "VG"),
    "video": ("CLS", "QA", "RET", "MRET"),
    "visdoc": ("ViDoRe-V1", "ViDoRe-V2", "VisRAG", "OOD"),
}
REPORTED: dict[str, dict[str, float]] = {key: value for key, value in _DATA["reported"].items() if key != "_about"}
_ROW_KEYS = ("instruction", "positives", "relevance", "candidates")


@dataclass(frozen=True)
class MMEBTask:
    """One MMEB-V2 task: its group and instructions (None: per-sample or unknown, "": none)."""

    name: str
    modality: str
    meta_task: str
    query_instruction: str | None
    target_instruction: str | None

    @property
    def metric(self) -> str:
        """``"ndcg@5"`` for visual documents, else ``"hit@1"``."""
        return "ndcg@5" if self.modality == "visdoc" else "hit@1"


def _task(name: str, modality: str, meta_task: str) -> MMEBTask:
    # Image tasks carry their instructions per sample; the core's one image task per family names a prompt.
    known = MMEB_V2_INSTRUCTIONS.get(name) if modality != "image" else None
    query, target = known or TaskInstructions(None, None)
    return MMEBTask(name, modality, meta_task, query, target)


TASKS: dict[str, MMEBTask] = {name: _task(name, **row) for name, row in _DATA["tasks"].items()}


def hit_at_1(ranking: Sequence[str], positives: Sequence[str]) -> float:
    """1.0 when the top-ranked candidate is a gold one."""
    return float(bool(ranking) and ranking[0] in set(positives))


def ndcg_at_5(ranking: Sequence[str], positives: Sequence[str], relevance: Sequence[float] | None = None) -> float:
    """nDCG@5 with linear gains; the ideal ranking orders the gold candidates by relevance."""
    gains = dict(zip(positives, relevance or [1.0] * len(positives), strict=True))
    dcg = sum(gains.get(candidate, 0.0) / math.log2(rank + 2) for rank, candidate in enumerate(ranking[:5]))
    ideal = sum(gain / math.log2(rank + 2) for rank, gain in enumerate(sorted(gains.values(), reverse=True)[:5]))
    return dcg / ideal if ideal > 0 else 0.0


def evaluate_task(
    encoder: UMER1Encoder, folder: str | Path, task: MMEBTask | None = None, *, batch_size: int = 8
) -> float:
    """Score one MMEB-V2 task folder (0-100, as the paper reports).

    Args:
        encoder: A UME-R1 encoder (its mode is used for queries and candidates alike).
        folder: The task folder.
        task: The task's row of :data:`TASKS`; defaults to the folder's name.
        batch_size: Inputs per forward pass (or rollout).

    Raises:
        ValueError: An unknown task, a missing file, or queries naming unknown candidates.
    """
    from ume_plugins.records import read_records

    folder = Path(folder)
    task = task or TASKS.get(folder.name)
    if task is None:
        raise ValueError(f"{folder.name} is not an MMEB-V2 task; known: {sorted(TASKS)}")
    queries = read_records(folder / "queries.jsonl")
    candidates = read_records(folder / "candidates.jsonl")
    query_vectors = embed_records(encoder, queries, task.query_instruction, task.name, batch_size)
    candidate_vectors = embed_records(encoder, candidates, task.target_instruction, task.name, batch_size)
    candidate_ids = [key for key, _ in candidates]
    position = {key: index for index, key in enumerate(candidate_ids)}
    scores = []
    for (query_id, row), vector in zip(queries, query_vectors, strict=True):
        if not row.get("positives"):
            raise ValueError(f"{task.name}: query {query_id} has no 'positives'")
        pool = row.get("candidates") or candidate_ids
        unknown = [key for key in [*pool, *row["positives"]] if key not in position]
        if unknown:
            raise ValueError(f"{task.name}: queries name unknown candidates {unknown[:5]}")
        similarity = candidate_vectors[[position[key] for key in pool]] @ vector
        ranking = [pool[index] for index in np.argsort(-similarity, kind="stable")]
        if task.metric == "ndcg@5":
            scores.append(ndcg_at_5(ranking, row["positives"], row.get("relevance")))
        else:
            scores.append(hit_at_1(ranking, row["positives"]))
    return 100.0 * float(np.mean(scores))


def task_folders(root: str | Path, tasks: Sequence[str] | None = None) -> list[str]:
    """The MMEB-V2 task folders under ``root`` to score: the named ones, or every one present.

    Folders whose names are not MMEB-V2 tasks are skipped with one warning naming the closest task.

    Raises:
        ValueError: ``root`` is not a folder, holds no task folder, or a named task is unknown or absent.
    """
    root = Path(root)
    if not root.is_dir():
        raise ValueError(f"MMEB-V2 root {root} is not a folder")
    folders = sorted(path.name for path in root.iterdir() if path.is_dir())
    if tasks:
        unknown = [name for name in tasks if name not in TASKS]
        if unknown:
            raise ValueError(f"{', '.join(unknown)}: not MMEB-V2 task names; known: {sorted(TASKS)}")
        absent = [name for name in tasks if name not in folders]
        if absent:
            raise ValueError(f"no folder for {', '.join(absent)} under {root}")
        return list(tasks)
    skipped = [name for name in folders if name not in TASKS]
    if skipped:
        closest = {name: difflib.get_close_matches(name, TASKS, n=1) for name in skipped}
        hints = "; ".join(f"{name} (closest task: {match[0] if match else 'none'})" for name, match in closest.items())
        logger.warning("Skipping folders under %s that are not MMEB-V2 task names: %s", root, hints)
    names = [name for name in folders if name in TASKS]
    if not names:
        raise ValueError(f"no MMEB-V2 task folders under {root}")
    return names


def evaluate_mmeb(
    encoder: UMER1Encoder, root: str | Path, tasks: Sequence[str] | None = None, *, batch_size: int = 8
) -> dict[str, float]:
    """Score every MMEB-V2 task folder under ``root`` (or the named ones; see :func:`task_folders`).

    Returns:
        Task name to score (0-100).

    Raises:
        ValueError: See :func:`task_folders`.
    """
    results = {}
    for name in task_folders(root, tasks):
        results[name] = evaluate_task(encoder, Path(root) / name, TASKS[name], batch_size=batch_size)
        logger.info("%s: %.1f", name, results[name])
    return results


def summarise(scores: dict[str, float]) -> dict[str, dict[str, float]]:
    """Per-category averages: each meta-task, the category overall, and ``all`` over every task."""
    summary: dict[str, dict[str, float]] = {}
    for category, meta_tasks in CATEGORIES.items():
        present = {name: score for name, score in scores.items() if TASKS[name].modality == category}
        if not present:
            continue
        row = {}
        for meta_task in meta_tasks:
            values = [score for name, score in present.items() if TASKS[name].meta_task == meta_task]
            if values:
                row[meta_task] = float(np.mean(values))
        row["overall"] = float(np.mean(list(present.values())))
        summary[category] = row
    summary["all"] = {"overall": float(np.mean(list(scores.values())))}
    return summary


def format_table(scores: dict[str, float], reported: dict[str, float] | None = None) -> str:
    """The paper's per-category table (markdown), with reported averages beside ours when given."""
    summary = summarise(scores)
    lines = ["| category | meta-tasks | overall | tasks | reported |", "|---|---|---|---|---|"]
    for category, row in summary.items():
        parts = ", ".join(f"{key} {value:.1f}" for key, value in row.items() if key != "overall")
        count = len(scores) if category == "all" else sum(TASKS[n].modality == category for n in scores)
        paper = f"{reported[category]:.1f}" if reported and category in reported else ""
        lines.append(f"| {category} | {parts} | {row['overall']:.1f} | {count} | {paper} |")
    return "\n".join(lines)


def embed_records(
    encoder: UMER1Encoder, records: list[tuple[str, dict]], default: str | None, task: str, batch_size: int
) -> np.ndarray:
    """Vectors of MMEB rows, each encoded under its own ``instruction`` (else ``default``, the task's).

    Args:
        encoder: A UME-R1 encoder.
        records: ``(id, row)`` pairs as read from a task's JSONL file.
        default: The task's instruction for this side (None: unknown, "": none).
        task: The task's name, for messages.
        batch_size: Inputs per forward pass (or rollout).
    """
    if default is None and not any("instruction" in row for _, row in records):
        logger.warning("%s: no instruction is known for this side and the rows carry none", task)
    groups: dict[str, list[int]] = {}
    inputs = []
    for index, (_, row) in enumerate(records):
        groups.setdefault(row.get("instruction", default) or "", []).append(index)
        inputs.append({key: value for key, value in row.items() if key not in _ROW_KEYS})
    vectors = np.zeros((len(records), encoder.model.get_embedding_dimension()), dtype=np.float32)
    for instruction, indices in groups.items():
        vectors[indices] = encoder.model.encode(
            [inputs[index] for index in indices],
            prompt=instruction or None,
            mode=encoder.mode,
            batch_size=batch_size,
            show_progress_bar=False,
            generation_kwargs=encoder.generation_kwargs or None,
        )
    return vectors


def reported_for(model_name: str | None) -> dict[str, Any] | None:
    """The paper's averages for a published checkpoint, if any."""
    return REPORTED.get(model_name or "")
