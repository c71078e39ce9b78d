"""UMEEmbeddings against the core model and real LangChain vector stores (tiny random checkpoint)."""

from __future__ import annotations

import base64
import functools
import shutil
import threading
import uuid
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import chromadb
import numpy as np
import pytest
import ume_plugins
from chromadb.config import Settings
from langchain_chroma import Chroma
from langchain_core.documents import Document
from langchain_core.vectorstores import InMemoryVectorStore
from PIL import Image

from langchain_ume import UMEEmbeddings

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
def embeddings(core) -> UMEEmbeddings:
    return UMEEmbeddings(model=core, mode="discriminative")


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


def test_vectors_equal_the_core_and_instructions_pass_through(core, images):
    adapter = UMEEmbeddings(model=core, mode="discriminative", query_instruction=QUERY, document_instruction=DOCUMENT)
    texts = ["a red square", "a blue square"]
    paths = [images["red"], images["blue"]]
    fused = [{"text": "a red square", "image": str(images["red"])}]

    np.testing.assert_allclose(adapter.embed_documents(texts), core.encode(texts, prompt=DOCUMENT), atol=1e-6)
    np.testing.assert_allclose(adapter.embed_query("red"), core.encode("red", prompt=QUERY), atol=1e-6)
    np.testing.assert_allclose(
        adapter.embed_image(uris=[str(path) for path in paths]), core.encode(paths, prompt=DOCUMENT), atol=1e-6
    )
    np.testing.assert_allclose(adapter.embed_inputs(fused, as_query=True), core.encode(fused, prompt=QUERY), atol=1e-6)
    plain = UMEEmbeddings(model=core, mode="discriminative")
    assert not np.allclose(adapter.embed_query("red"), plain.embed_query("red"), atol=1e-4)


def test_generative_mode_passes_through(core):
    generation = {"max_new_tokens": 4}
    adapter = UMEEmbeddings(model=core, mode="generative", encode_kwargs={"generation_kwargs": generation})
    vector = adapter.embed_query("a red square")
    np.testing.assert_allclose(
        vector, core.encode("a red square", mode="generative", generation_kwargs=generation), atol=1e-6
    )
    assert not np.allclose(vector, core.encode("a red square", mode="discriminative"), atol=1e-4)


def test_an_unknown_mode_fails_at_construction():
    with pytest.raises(ValueError, match="mode must be one of"):
        UMEEmbeddings(model_name="ume-r1-tiny", mode="fast", device="cpu")


def test_outputs_are_lists_of_python_floats(embeddings, images):
    rows = embeddings.embed_image(uris=[str(images["red"])]) + embeddings.embed_inputs(["text", images["blue"]])
    assert all(type(row) is list and type(row[0]) is float for row in rows)
    assert embeddings.embed_documents([]) == []


def test_texts_that_name_files_stay_text(core, embeddings, images):
    path = str(images["red"])
    as_text = embeddings.embed_documents([path])
    np.testing.assert_allclose(as_text, core.encode([{"text": path}]), atol=1e-6)
    assert not np.allclose(as_text, embeddings.embed_image(uris=[path]), atol=1e-4)


def test_embed_image_reads_paths_urls_and_data_uris(embeddings, images, served, tmp_path):
    path = images["red"]
    no_extension = tmp_path / "red-image"
    shutil.copy(path, no_extension)
    data_uri = "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode()
    uris = [str(path), str(no_extension), data_uri, f"{served}/{path.name}"]
    vectors = np.array(embeddings.embed_image(uris=uris))
    np.testing.assert_allclose(vectors, np.repeat(vectors[:1], len(uris), axis=0), atol=1e-5)


def test_a_bad_image_is_named_by_index(embeddings, images, tmp_path):
    with pytest.raises(ume_plugins.UMEInputError, match="Input 1"):
        embeddings.embed_image(uris=[str(images["red"]), str(tmp_path / "missing.png")])


@pytest.mark.asyncio
async def test_async_variants_match_sync(embeddings, images):
    uris = [str(images["red"])]
    fused = [{"text": "red", "image": uris[0]}]
    assert await embeddings.aembed_documents(["red"]) == embeddings.embed_documents(["red"])
    assert await embeddings.aembed_query("red") == embeddings.embed_query("red")
    assert await embeddings.aembed_image(uris=uris) == embeddings.embed_image(uris=uris)
    assert await embeddings.aembed_inputs(fused, as_query=True) == embeddings.embed_inputs(fused, as_query=True)


def test_in_memory_store_round_trip_with_text_and_images(embeddings, images):
    store = InMemoryVectorStore(embedding=embeddings)
    store.add_documents([Document(page_content=f"a {color} shape", metadata={"color": color}) for color in COLORS])
    uris = [str(images[color]) for color in COLORS]
    # InMemoryVectorStore has no add_images: image rows go in with their vectors from embed_image.
    for color, uri, vector in zip(COLORS, uris, embeddings.embed_image(uris=uris), strict=True):
        store.store[uri] = {"id": uri, "vector": vector, "text": uri, "metadata": {"color": color, "image": True}}

    top = store.similarity_search("a blue shape", k=1)[0]
    assert (top.page_content, top.metadata) == ("a blue shape", {"color": "blue"})
    by_image = store.similarity_search_by_vector(embeddings.embed_image(uris=[uris[2]])[0], k=1)[0]
    assert by_image.metadata == {"color": "green", "image": True}
    assert len(store.similarity_search("anything", k=10)) == 6


def test_chroma_round_trip_with_text_and_images(embeddings, images):
    client = chromadb.EphemeralClient(settings=Settings(anonymized_telemetry=False))
    store = Chroma(collection_name=f"ume-{uuid.uuid4().hex}", embedding_function=embeddings, client=client)
    store.add_texts([f"a {color} shape" for color in COLORS], metadatas=[{"color": color} for color in COLORS])
    store.add_images(uris=[str(images[color]) for color in COLORS], metadatas=[{"image": color} for color in COLORS])

    assert store.similarity_search("a green shape", k=1)[0].metadata == {"color": "green"}
    assert store.similarity_search_by_image(uri=str(images["blue"]), k=1)[0].metadata == {"image": "blue"}
