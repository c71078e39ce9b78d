"""UMEEmbedding against the core model and a real MultiModalVectorStoreIndex (tiny random checkpoint)."""

from __future__ import annotations

import functools
import threading
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from io import BytesIO
from pathlib import Path

import numpy as np
import pytest
import ume_plugins
from llama_index.core.callbacks import CallbackManager, CBEventType, LlamaDebugHandler
from llama_index.core.embeddings import MultiModalEmbedding
from llama_index.core.indices import MultiModalVectorStoreIndex
from llama_index.core.schema import ImageNode, TextNode
from PIL import Image

from llama_index.embeddings.ume import UMEEmbedding

QUERY = "Find an image that matches the given text:"
DOCUMENT = "Represent the given image."
COLORS = ("red", "blue", "green")


@pytest.fixture(scope="module")
def core():
    return ume_plugins.load("ume-r1-tiny", mode="discriminative", device="cpu")


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("images")
    paths = {}
    for color in COLORS:
        paths[color] = folder / f"{color}.png"
        Image.new("RGB", (64, 64), color).save(paths[color])
    return paths


@pytest.fixture(scope="module")
def embed_model(core) -> UMEEmbedding:
    return UMEEmbedding(model=core, mode="discriminative")


@pytest.fixture(scope="module")
def served(images):
    """An http:// base URL serving the test images from a local server."""
    handler = functools.partial(SimpleHTTPRequestHandler, directory=str(images["red"].parent))
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_loads_by_name_as_a_multimodal_embedding():
    embed_model = UMEEmbedding("ume-r1-tiny", mode="discriminative", device="cpu")
    assert isinstance(embed_model, MultiModalEmbedding)
    assert embed_model.to_payload()["model_name"] == "ume-r1-tiny"
    assert len(embed_model.get_text_embedding("a red shape")) == 64


def test_an_unknown_mode_fails_at_construction():
    with pytest.raises(ValueError, match="mode must be one of"):
        UMEEmbedding("ume-r1-tiny", mode="fast", device="cpu")


def test_multimodal_index_retrieves_text_and_image_nodes(embed_model, images):
    text_nodes = [TextNode(text=f"a {color} shape") for color in COLORS]
    image_nodes = [ImageNode(image_path=str(images[color]), metadata={"color": color}) for color in COLORS]
    index = MultiModalVectorStoreIndex(text_nodes + image_nodes, embed_model=embed_model, image_embed_model=embed_model)
    retriever = index.as_retriever(similarity_top_k=1, image_similarity_top_k=2)

    hits = retriever.retrieve("a blue shape")
    assert hits[0].node.get_content() == "a blue shape"
    assert [type(hit.node) for hit in hits] == [TextNode, ImageNode, ImageNode]
    to_images = retriever.text_to_image_retrieve("a blue shape")
    assert len(to_images) == 2 and all(isinstance(hit.node, ImageNode) for hit in to_images)
    by_image = retriever.image_to_image_retrieve(str(images["green"]))
    assert by_image[0].node.metadata == {"color": "green"}
    assert by_image[0].score == pytest.approx(1.0, abs=1e-4)


def test_vectors_equal_the_core_and_instructions_pass_through(core, images):
    embed_model = UMEEmbedding(model=core, mode="discriminative", query_instruction=QUERY, text_instruction=DOCUMENT)
    texts = ["a red square", "a blue square"]
    paths = [images["red"], images["blue"]]

    np.testing.assert_allclose(embed_model.get_query_embedding("red"), core.encode("red", prompt=QUERY), atol=1e-6)
    np.testing.assert_allclose(
        embed_model.get_text_embedding_batch(texts), core.encode(texts, prompt=DOCUMENT), atol=1e-6
    )
    np.testing.assert_allclose(
        embed_model.get_image_embedding_batch([str(path) for path in paths]),
        core.encode(paths, prompt=DOCUMENT),
        atol=1e-6,
    )
    plain = UMEEmbedding(model=core, mode="discriminative")
    assert not np.allclose(embed_model.get_query_embedding("red"), plain.get_query_embedding("red"), atol=1e-4)


def test_generative_mode_passes_through(core):
    generation = {"max_new_tokens": 4}
    embed_model = UMEEmbedding(model=core, mode="generative", encode_kwargs={"generation_kwargs": generation})
    vector = embed_model.get_text_embedding("a red square")
    np.testing.assert_allclose(
        vector, core.encode("a red square", mode="generative", generation_kwargs=generation), atol=1e-6
    )
    assert not np.allclose(vector, core.encode("a red square", mode="discriminative"), atol=1e-4)


def test_images_as_path_bytesio_and_url(embed_model, images, served):
    path = images["red"]
    consumed = BytesIO(path.read_bytes())
    consumed.read()
    inputs = [str(path), BytesIO(path.read_bytes()), consumed, f"{served}/{path.name}"]
    vectors = np.array(embed_model.get_image_embedding_batch(inputs))
    np.testing.assert_allclose(vectors, np.repeat(vectors[:1], len(inputs), axis=0), atol=1e-5)
    assert type(vectors.tolist()[0][0]) is float


def test_batches_report_progress_and_callbacks(core, capsys):
    debug = LlamaDebugHandler()
    embed_model = UMEEmbedding(
        model=core, mode="discriminative", embed_batch_size=2, callback_manager=CallbackManager([debug])
    )
    texts = [f"shape number {i}" for i in range(5)]
    vectors = embed_model.get_text_embedding_batch(texts, show_progress=True)

    np.testing.assert_allclose(vectors, core.encode(texts), atol=1e-6)
    assert "Generating embeddings" in capsys.readouterr().err
    events = debug.get_event_pairs(CBEventType.EMBEDDING)
    assert [len(end.payload["chunks"]) for _, end in events] == [2, 2, 1]


@pytest.mark.asyncio
async def test_async_variants_match_sync(embed_model, images):
    paths = [str(images["red"]), str(images["blue"])]
    assert await embed_model.aget_query_embedding("red") == embed_model.get_query_embedding("red")
    assert await embed_model.aget_text_embedding("red") == embed_model.get_text_embedding("red")
    assert await embed_model.aget_text_embedding_batch(["a", "b"]) == embed_model.get_text_embedding_batch(["a", "b"])
    assert await embed_model.aget_image_embedding(paths[0]) == embed_model.get_image_embedding(paths[0])
    assert await embed_model.aget_image_embedding_batch(paths) == embed_model.get_image_embedding_batch(paths)
