"""Multimodal retrieval with LangChain and UME-R1: text, image and fused documents; text and image queries.

Runs offline on the tiny random checkpoint by default (its rankings are meaningless; it shows the
pipeline runs). Set up once with ``bash .ci/setup`` (installs ume-plugins and its integrations into
``.venv``), then from the repository root:

    .venv/bin/python examples/langchain_retrieval.py
    .venv/bin/python examples/langchain_retrieval.py --model ume-r1                     # real UME-R1-2B
    .venv/bin/python examples/langchain_retrieval.py --model ume-r1 --mode generative   # UME-R1's reported mode (slow)
"""

from __future__ import annotations

import argparse
from pathlib import Path

from langchain_core.documents import Document
from langchain_core.vectorstores import InMemoryVectorStore
from langchain_ume import UMEEmbeddings

DATA = Path(__file__).parent / "data"
QUERY_INSTRUCTION = "Find an image that matches the given text:"


def add_with_vectors(store: InMemoryVectorStore, documents: list[Document], vectors: list[list[float]]) -> None:
    """Add documents whose vectors were computed outside the store (InMemoryVectorStore embeds only text)."""
    for document, vector in zip(documents, vectors, strict=True):
        store.store[document.id] = {
            "id": document.id,
            "vector": vector,
            "text": document.page_content,
            "metadata": document.metadata,
        }


def show(title: str, hits: list[tuple[Document, float]]) -> None:
    print(f"\n{title}")
    for document, score in hits:
        print(f"  {score:.4f}  [{document.metadata['kind']}] {document.id}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="ume-r1-tiny", help="alias, hub id or path (default: ume-r1-tiny)")
    parser.add_argument("--mode", default="discriminative", choices=["discriminative", "generative"])
    parser.add_argument("--max-new-tokens", type=int, default=None, help="reasoning budget of generative mode")
    parser.add_argument("--device", default=None)
    args = parser.parse_args()
    if args.model.strip().lower() == "ume-r1-tiny":
        print("NOTE: ume-r1-tiny has RANDOM weights: the scores below are meaningless. Use --model ume-r1.")

    generation = {"generation_kwargs": {"max_new_tokens": args.max_new_tokens}} if args.max_new_tokens else {}
    embeddings = UMEEmbeddings(
        model_name=args.model,
        mode=args.mode,
        device=args.device,
        query_instruction=QUERY_INSTRUCTION,
        encode_kwargs=generation,
    )
    store = InMemoryVectorStore(embedding=embeddings)

    captions = ["a red circle", "a blue square", "a green circle", (DATA / "caption.txt").read_text().strip()]
    store.add_documents([Document(id=text, page_content=text, metadata={"kind": "text"}) for text in captions])
    images = sorted(DATA.glob("*.png"))
    image_docs = [Document(id=path.name, page_content=str(path), metadata={"kind": "image"}) for path in images]
    add_with_vectors(store, image_docs, embeddings.embed_image(uris=[str(path) for path in images]))
    fused = {"text": "a blue shape", "image": str(DATA / "blue_square.png")}
    fused_doc = Document(id="blue_square.png + 'a blue shape'", page_content=fused["text"], metadata={"kind": "fused"})
    add_with_vectors(store, [fused_doc], embeddings.embed_inputs([fused]))

    show("Text query 'a red circle':", store.similarity_search_with_score("a red circle", k=3))
    red = embeddings.embed_image(uris=[str(DATA / "red_circle.png")])[0]
    show("Image query red_circle.png:", store.similarity_search_with_score_by_vector(red, k=3))


if __name__ == "__main__":
    main()
