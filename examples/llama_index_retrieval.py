"""Multimodal retrieval with LlamaIndex and UME-R1: a MultiModalVectorStoreIndex over texts and images.

Runs offline on the tiny random checkpoint by default (its rankings are meaningless; it shows the
pipeline runs). Set up once with ``bash .ci/setup`` (installs ume-plugins and its integrations into
``.venv``), then from the repository root:

    .venv/bin/python examples/llama_index_retrieval.py
    .venv/bin/python examples/llama_index_retrieval.py --model ume-r1                    # real UME-R1-2B
    .venv/bin/python examples/llama_index_retrieval.py --model ume-r1 --mode generative  # the reported mode (slow)
"""

from __future__ import annotations

import argparse
from pathlib import Path

from llama_index.core.indices import MultiModalVectorStoreIndex
from llama_index.core.schema import ImageNode, NodeWithScore, TextNode
from llama_index.embeddings.ume import UMEEmbedding

DATA = Path(__file__).parent / "data"
QUERY_INSTRUCTION = "Find an image that matches the given text:"


def show(title: str, hits: list[NodeWithScore]) -> None:
    print(f"\n{title}")
    for hit in hits:
        name = hit.node.metadata["file_name"] if isinstance(hit.node, ImageNode) else hit.node.get_content()
        print(f"  {hit.score:.4f}  [{type(hit.node).__name__}] {name}")


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
    embed_model = UMEEmbedding(
        args.model, mode=args.mode, device=args.device, query_instruction=QUERY_INSTRUCTION, encode_kwargs=generation
    )
    captions = ["a red circle", "a blue square", "a green circle", (DATA / "caption.txt").read_text().strip()]
    nodes = [TextNode(text=text) for text in captions]
    # Nodes without any content are skipped by the index: image nodes carry their file name, as readers set it.
    images = sorted(DATA.glob("*.png"))
    nodes += [ImageNode(image_path=str(path), metadata={"file_name": path.name}) for path in images]
    index = MultiModalVectorStoreIndex(nodes, embed_model=embed_model, image_embed_model=embed_model)
    retriever = index.as_retriever(similarity_top_k=2, image_similarity_top_k=2)

    show("retrieve('a red circle'): texts, then images", retriever.retrieve("a red circle"))
    show("text_to_image_retrieve('a red circle'):", retriever.text_to_image_retrieve("a red circle"))
    show("image_to_image_retrieve(red_circle.png):", retriever.image_to_image_retrieve(str(DATA / "red_circle.png")))


if __name__ == "__main__":
    main()
