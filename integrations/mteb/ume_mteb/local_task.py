"""Any2Any retrieval on your own data, evaluated by mteb and cached in mteb's layout.

A task folder holds::

    queries.jsonl   {"id": "q1", "text": "...", "image": "a.png" | [...], "video": "clip.mp4" | [frames] | "frames/"}
    corpus.jsonl    {"id": "d1", ...same fields...}
    qrels.jsonl     {"query_id": "q1", "corpus_id": "d1", "score": 1}   (or qrels.tsv: query-id, corpus-id, score;
                    or a "relevant": ["d1"] / {"d1": 2} field on each query)
    task.json       optional: {"name", "description", "instruction": "..." | {"query": "...", "document": "..."},
                    "main_score", "eval_langs"}

Relative paths are resolved against the folder. A video is a file, a list of frame images or a
folder of frame images (sorted by name); within one file all videos use the same form.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any, get_args

from mteb.abstasks.retrieval import AbsTaskRetrieval
from mteb.abstasks.task_metadata import TaskCategory, TaskMetadata

if TYPE_CHECKING:
    from mteb import ResultCache, TaskResult
    from mteb.models.models_protocols import MTEBModels


QUERIES_FILE = "queries.jsonl"
CORPUS_FILE = "corpus.jsonl"
QRELS_FILES = ("qrels.jsonl", "qrels.tsv")
TASK_FILE = "task.json"
# Category letters in the order mteb writes them ("vt2t", "it2i", ...).
_LETTERS = (("video", "v"), ("audio", "a"), ("image", "i"), ("text", "t"))
_TASK_KEYS = {"name", "description", "instruction", "main_score", "eval_langs"}
# What a query or corpus row may embed.
_FIELDS = ("text", "image", "video")


class LocalAny2AnyRetrieval(AbsTaskRetrieval):
    """An mteb Any2AnyRetrieval task read from a local folder; make one with :func:`local_task`.

    mteb keeps task metadata on the class, so each folder gets its own subclass. The instruction
    comes only from ``task.json``: no generic text-retrieval prompt is added.
    """

    abstask_prompt = ""
    queries: list[tuple[str, dict[str, Any]]]
    corpus: list[tuple[str, dict[str, Any]]]
    qrels: dict[str, dict[str, int]]

    def load_data(self, num_proc: int | None = None, **kwargs: Any) -> None:
        """Build the queries and corpus datasets (images and frames are decoded lazily)."""
        if self.data_loaded:
            return
        from mteb.abstasks.retrieval_dataset_loaders import RetrievalSplitData

        split = RetrievalSplitData(
            queries=_dataset(self.queries),
            corpus=_dataset(self.corpus),
            relevant_docs=self.qrels,
            top_ranked=None,
        )
        self.dataset = {"default": {"test": split}}
        self.data_loaded = True


def local_task(folder: str | Path) -> LocalAny2AnyRetrieval:
    """Read a local task folder (see the module docstring) into an mteb task.

    The task's category (``"t2i"``, ``"it2v"``, ...) and modalities follow the fields present; its
    dataset revision is a hash of the files, so changed data never reuses cached results.

    Raises:
        ValueError: Missing files, malformed lines, rows with unknown keys or nothing to embed,
            unknown ids in the qrels, mixed video forms.
    """
    from ume_plugins.records import read_records

    folder = Path(folder)
    settings = _read_settings(folder / TASK_FILE)
    queries = _checked(read_records(_required(folder / QUERIES_FILE)), folder / QUERIES_FILE, {"relevant"})
    corpus = _checked(read_records(_required(folder / CORPUS_FILE)), folder / CORPUS_FILE, set())
    qrels = _read_qrels(folder, queries, {key for key, _ in corpus})
    query_modalities, corpus_modalities = _modalities(queries), _modalities(corpus)
    category = f"{_letters(query_modalities)}2{_letters(corpus_modalities)}"
    metadata = TaskMetadata(
        name=settings.get("name", folder.resolve().name),
        description=settings.get("description", f"Local Any2Any retrieval task read from {folder}."),
        dataset={"path": str(folder.resolve()), "revision": _content_hash(folder)},
        type="Any2AnyRetrieval",
        category=category if category in get_args(TaskCategory) else None,
        modalities=sorted(query_modalities | corpus_modalities),
        eval_splits=["test"],
        eval_langs=settings.get("eval_langs", ["eng-Latn"]),
        main_score=settings.get("main_score", "ndcg_at_10"),
        prompt=settings.get("instruction") or None,
        sample_creation="found",
    )
    attributes = {"metadata": metadata, "queries": queries, "corpus": corpus, "qrels": qrels}
    return type(f"LocalAny2AnyRetrieval_{metadata.name}", (LocalAny2AnyRetrieval,), attributes)()


def evaluate_local(
    model: MTEBModels,
    folder: str | Path | LocalAny2AnyRetrieval,
    *,
    cache: ResultCache | None = None,
    overwrite_strategy: str = "only-missing",
    encode_kwargs: dict[str, Any] | None = None,
) -> TaskResult:
    """Evaluate ``model`` on a local task folder with ``mteb.evaluate``.

    Args:
        model: An mteb encoder (e.g. from :func:`ume_mteb.load_model`).
        folder: The task folder, or the task :func:`local_task` read from it.
        cache: Where results are written, in mteb's layout
            (``results/<model>/<revision>/[experiments/<kwargs>/]<task>.json``); None writes nothing.
        overwrite_strategy: mteb's overwrite strategy (``"only-missing"``, ``"always"``, ...);
            cached results of other data (another content hash) are always replaced.
        encode_kwargs: Passed to the encoder (``batch_size``, ...).

    Returns:
        The task's result.
    """
    import mteb

    task = folder if isinstance(folder, LocalAny2AnyRetrieval) else local_task(folder)
    if cache is not None and overwrite_strategy == "only-missing":
        cached = cache.load_task_result(task.metadata.name, model.mteb_model_meta)
        # mteb reuses complete results whatever their dataset revision; local data may have changed
        if cached is not None and cached.dataset_revision != task.metadata.revision:
            overwrite_strategy = "always"
    result = mteb.evaluate(
        model,
        task,
        cache=cache,
        overwrite_strategy=overwrite_strategy,
        encode_kwargs=encode_kwargs or {"batch_size": 8},
        show_progress_bar=False,
    )
    return result.task_results[0]


def _required(path: Path) -> Path:
    if not path.is_file():
        raise ValueError(f"a local task folder needs {path.name}: {path} not found")
    return path


def _read_settings(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    settings = json.loads(path.read_text(encoding="utf-8"))
    unknown = sorted(set(settings) - _TASK_KEYS)
    if unknown:
        raise ValueError(f"{path}: unknown key(s) {unknown}; accepted: {sorted(_TASK_KEYS)}")
    return settings


def _read_qrels(folder: Path, queries: list[tuple[str, dict]], corpus_ids: set[str]) -> dict[str, dict[str, int]]:
    qrels: dict[str, dict[str, int]] = {}
    for query_id, row in queries:
        relevant = row.pop("relevant", None)
        if isinstance(relevant, list):
            relevant = dict.fromkeys(relevant, 1)
        for corpus_id, score in (relevant or {}).items():
            qrels.setdefault(query_id, {})[str(corpus_id)] = int(score)
    for line in _qrel_lines(folder):
        qrels.setdefault(line[0], {})[line[1]] = line[2]
    query_ids = {key for key, _ in queries}
    named_docs = {corpus_id for docs in qrels.values() for corpus_id in docs}
    unknown = sorted((set(qrels) - query_ids) | (named_docs - corpus_ids))
    if unknown:
        raise ValueError(f"qrels name ids that are not in {QUERIES_FILE} / {CORPUS_FILE}: {unknown[:10]}")
    if not qrels:
        raise ValueError(f"no relevance judgements in {folder}: add {QRELS_FILES[0]} or 'relevant' to the queries")
    return qrels


def _qrel_lines(folder: Path) -> list[tuple[str, str, int]]:
    jsonl, tsv = (folder / name for name in QRELS_FILES)
    if jsonl.is_file():
        rows = [json.loads(line) for line in jsonl.read_text(encoding="utf-8").splitlines() if line.strip()]
        return [(str(row["query_id"]), str(row["corpus_id"]), int(row.get("score", 1))) for row in rows]
    if tsv.is_file():
        lines = [line.split("\t") for line in tsv.read_text(encoding="utf-8").splitlines() if line.strip()]
        if lines and not lines[0][-1].strip().lstrip("-").isdigit():
            lines = lines[1:]  # header
        return [(query, corpus, int(score)) for query, corpus, score in lines]
    return []


def _checked(records: list[tuple[str, dict]], path: Path, extra_keys: set[str]) -> list[tuple[str, dict]]:
    """Refuse rows with a key this file does not define, or nothing to embed (a typo must not score)."""
    allowed = {*_FIELDS, *extra_keys}
    for key, row in records:
        unknown = sorted(set(row) - allowed)
        if unknown:
            raise ValueError(f"{path}: row {key!r} has unknown key(s) {unknown} (known: {sorted(allowed)})")
        if not any(row.get(field) for field in _FIELDS):
            raise ValueError(f"{path}: row {key!r} has no text, image or video")
    return records


def _modalities(records: list[tuple[str, dict]]) -> set[str]:
    return {key for _, row in records for key in _FIELDS if row.get(key)}


def _letters(modalities: set[str]) -> str:
    return "".join(letter for modality, letter in _LETTERS if modality in modalities)


def _content_hash(folder: Path) -> str:
    digest = hashlib.sha256()
    for name in (QUERIES_FILE, CORPUS_FILE, *QRELS_FILES, TASK_FILE):
        if (folder / name).is_file():
            digest.update(name.encode() + (folder / name).read_bytes())
    return digest.hexdigest()[:12]


def _dataset(records: list[tuple[str, dict]]):
    """Columns ``id`` and the modalities present; missing text is "", missing media None or []."""
    from datasets import Dataset, Features, Image, List, Value, Video

    rows = [row for _, row in records]
    columns: dict[str, list[Any]] = {"id": [key for key, _ in records]}
    features = {"id": Value("string")}
    if any(row.get("text") for row in rows):
        columns["text"] = [row.get("text") or "" for row in rows]
        features["text"] = Value("string")
    images = [_as_list(row.get("image")) for row in rows]
    if any(images):
        several = any(len(entry) > 1 for entry in images)
        columns["image"] = images if several else [entry[0] if entry else None for entry in images]
        features["image"] = List(Image()) if several else Image()
    videos = [_video(row.get("video")) for row in rows]
    if any(video is not None for video in videos):
        forms = {type(video) for video in videos if video is not None}
        if len(forms) > 1:
            raise ValueError("videos must all be files or all be frame lists/folders within one JSONL file")
        frames = forms == {list}
        columns["video"] = [video if video is not None else ([] if frames else None) for video in videos]
        features["video"] = List(Image()) if frames else Video()
    return Dataset.from_dict(columns, features=Features(features))


def _as_list(value: Any) -> list[Any]:
    if value is None:
        return []
    return list(value) if isinstance(value, list) else [value]


def _video(value: Any) -> str | list[str] | None:
    """A video file path, or the frame paths of a list or a folder of frames."""
    if value is None:
        return None
    if isinstance(value, list):
        return value
    path = Path(value)
    if path.is_dir():
        from ume_plugins.sources import IMAGE_EXTENSIONS

        return [str(frame) for frame in sorted(path.iterdir()) if frame.suffix.lower() in IMAGE_EXTENSIONS]
    return str(path)
