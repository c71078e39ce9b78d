"""Evaluate UME-R1 on a small local Any2Any retrieval task with mteb, and read the results back.

Runs offline on the tiny RANDOM checkpoint by default (its scores only show the pipeline works:
each query here has an identical twin in the corpus, so even random weights find it). Set up once
with ``bash .ci/setup`` (installs ume-plugins and its integrations into ``.venv``), then from the
repository root:

    .venv/bin/python examples/mteb_local_retrieval.py
    .venv/bin/python examples/mteb_local_retrieval.py --model ume-r1 --mode generative   # real weights (GPU advised)

The task and its results stay in ``runs/mteb-example/`` (``--output`` to choose another folder).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import mteb
import ume_mteb
from ume_mteb.local_task import evaluate_local

DATA = Path(__file__).parent / "data"


def write_task(folder: Path) -> Path:
    """Queries, corpus and qrels over the bundled example images (see ume_mteb.local_task)."""
    rows = {
        "queries.jsonl": [
            {"id": "q-red", "image": str(DATA / "red_circle.png")},
            {"id": "q-square", "text": "a blue square", "image": str(DATA / "blue_square.png")},
            {"id": "q-words", "text": "a red circle"},
        ],
        "corpus.jsonl": [
            {"id": "d-red", "image": str(DATA / "red_circle.png")},
            {"id": "d-square", "text": "a blue square", "image": str(DATA / "blue_square.png")},
            {"id": "d-words", "text": "a red circle"},
            {"id": "d-green", "image": str(DATA / "green_circle.png")},
            {"id": "d-video", "video": [str(DATA / name) for name in ("red_circle.png", "green_circle.png")]},
        ],
        "qrels.jsonl": [
            {"query_id": "q-red", "corpus_id": "d-red"},
            {"query_id": "q-square", "corpus_id": "d-square"},
            {"query_id": "q-words", "corpus_id": "d-words"},
        ],
    }
    folder.mkdir(parents=True, exist_ok=True)
    for name, lines in rows.items():
        (folder / name).write_text("".join(json.dumps(line) + "\n" for line in lines), encoding="utf-8")
    (folder / "task.json").write_text(json.dumps({"name": "UMEExampleRetrieval"}), encoding="utf-8")
    return folder


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="ume-r1-tiny", help="ume-r1-tiny (offline, random), ume-r1, ume-r1-7b, ...")
    parser.add_argument("--mode", choices=["generative", "discriminative"], default="discriminative")
    parser.add_argument("--max-new-tokens", type=int, help="generative reasoning budget")
    parser.add_argument("--output", type=Path, default=Path("runs/mteb-example"), help="task and results folder")
    args = parser.parse_args()

    generation_kwargs = {"max_new_tokens": args.max_new_tokens} if args.max_new_tokens else None
    model = ume_mteb.load_model(args.model, mode=args.mode, generation_kwargs=generation_kwargs)
    cache = mteb.ResultCache(args.output / "mteb-cache")
    result = evaluate_local(model, write_task(args.output / "task"), cache=cache)
    path = cache.get_task_result_path(result.task_name, model.mteb_model_meta)
    scores = mteb.TaskResult.from_disk(path).scores["test"][0]
    print(f"model: {model.mteb_model_meta.model_name_with_experiment}")
    print(f"hit@1 {scores['hit_rate_at_1']:.3f}  nDCG@10 {scores['ndcg_at_10']:.3f}")
    print(f"results, in mteb's layout: {path}")


if __name__ == "__main__":
    main()
