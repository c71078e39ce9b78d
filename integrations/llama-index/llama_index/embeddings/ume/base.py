"""LlamaIndex multimodal embeddings backed by a UME-R1 SentenceTransformer."""

from __future__ import annotations

import asyncio
from io import BytesIO
from typing import Any

import ume_plugins
from llama_index.core.base.embeddings.base import Embedding
from llama_index.core.bridge.pydantic import Field, PrivateAttr
from llama_index.core.embeddings import MultiModalEmbedding
from llama_index.core.schema import ImageType
from sentence_transformers import SentenceTransformer


class UMEEmbedding(MultiModalEmbedding):
    """UME-R1 embeddings of texts and images for LlamaIndex.

    Queries get ``query_instruction``, texts and images get ``text_instruction`` (None uses the
    model's ``"query"`` / ``"document"`` prompt). Each call embeds a whole batch of up to
    ``embed_batch_size`` inputs at once. Never mix modes in one index: their vectors live in
    different spaces.

    Example:
        .. code-block:: python

            from llama_index.embeddings.ume import UMEEmbedding

            embed_model = UMEEmbedding(model_name="ume-r1", mode="discriminative")
            text = embed_model.get_text_embedding("A red fox jumps over a fence.")
            image = embed_model.get_image_embedding("photos/fox.jpg")

    Args:
        model_name: Alias, hub id or path of a UME-R1 checkpoint (a label only when ``model`` is given).
        model: An already loaded UME-R1 SentenceTransformer, used as is.
        **kwargs: The other fields (``mode``, ``device``, instructions, ``embed_batch_size``, ...).
    """

    model_name: str = Field(default="ume-r1", description="Alias, hub id or path of a UME-R1 checkpoint.")
    mode: str | None = Field(
        default=None, description="'generative', 'discriminative' or 'both'; None keeps the model's saved mode."
    )
    device: str | None = Field(default=None, description="Device to load the model on; None picks the best.")
    query_instruction: str | None = Field(default=None, description="Instruction for queries.")
    text_instruction: str | None = Field(default=None, description="Instruction for texts and images.")
    model_kwargs: dict[str, Any] = Field(
        default_factory=dict, description="Passed to `ume_plugins.load` (module settings, SentenceTransformer args)."
    )
    encode_kwargs: dict[str, Any] = Field(
        default_factory=dict, description="Passed to `encode` (e.g. `generation_kwargs`)."
    )

    _model: SentenceTransformer = PrivateAttr()

    def __init__(self, model_name: str = "ume-r1", *, model: SentenceTransformer | None = None, **kwargs: Any) -> None:
        super().__init__(model_name=model_name, **kwargs)
        if model is None:
            model = ume_plugins.load(self.model_name, mode=self.mode, device=self.device, **self.model_kwargs)
        self._model = model

    @classmethod
    def class_name(cls) -> str:
        """Name used in serialised payloads."""
        return "UMEEmbedding"

    def _embed(self, inputs: list[Any], as_query: bool) -> list[Embedding]:
        if as_query:
            encode, instruction = self._model.encode_query, self.query_instruction
        else:
            encode, instruction = self._model.encode_document, self.text_instruction
        vectors = encode(
            inputs, prompt=instruction, mode=self.mode, batch_size=self.embed_batch_size, **self.encode_kwargs
        )
        return vectors.tolist()

    def _get_query_embedding(self, query: str) -> Embedding:
        return self._embed([{"text": query}], as_query=True)[0]

    def _get_text_embedding(self, text: str) -> Embedding:
        return self._get_text_embeddings([text])[0]

    def _get_text_embeddings(self, texts: list[str]) -> list[Embedding]:
        return self._embed([{"text": text} for text in texts], as_query=False)

    def _get_image_embedding(self, img_file_path: ImageType) -> Embedding:
        return self._get_image_embeddings([img_file_path])[0]

    def _get_image_embeddings(self, img_file_paths: list[ImageType]) -> list[Embedding]:
        # A BytesIO is read by value: its position may already be at the end.
        images = [path.getvalue() if isinstance(path, BytesIO) else path for path in img_file_paths]
        return self._embed([{"image": image} for image in images], as_query=False)

    async def _aget_query_embedding(self, query: str) -> Embedding:
        return await asyncio.to_thread(self._get_query_embedding, query)

    async def _aget_text_embedding(self, text: str) -> Embedding:
        return await asyncio.to_thread(self._get_text_embedding, text)

    async def _aget_text_embeddings(self, texts: list[str]) -> list[Embedding]:
        return await asyncio.to_thread(self._get_text_embeddings, texts)

    async def _aget_image_embedding(self, img_file_path: ImageType) -> Embedding:
        return await asyncio.to_thread(self._get_image_embedding, img_file_path)

    async def _aget_image_embeddings(self, img_file_paths: list[ImageType]) -> list[Embedding]:
        return await asyncio.to_thread(self._get_image_embeddings, img_file_paths)
