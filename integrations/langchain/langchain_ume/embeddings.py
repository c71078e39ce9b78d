"""LangChain embeddings backed by a UME-R1 SentenceTransformer."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import ume_plugins
from langchain_core.embeddings import Embeddings
from langchain_core.runnables.config import run_in_executor
from pydantic import BaseModel, ConfigDict, Field, model_validator
from sentence_transformers import SentenceTransformer
from typing_extensions import Self


class UMEEmbeddings(BaseModel, Embeddings):
    """UME-R1 embeddings of texts, images and fused text+image inputs.

    Texts stay text even when they look like a path or URL. Images go through :meth:`embed_image`,
    the method Chroma's ``add_images`` and ``similarity_search_by_image`` call. Any input the core
    accepts (e.g. ``{"text": "a fox in snow", "image": "fox.jpg"}``) goes through
    :meth:`embed_inputs`. Vectors are L2-normalised lists of Python floats. Never mix modes in one
    index: their vectors live in different spaces.

    Example:
        .. code-block:: python

            from langchain_ume import UMEEmbeddings

            embeddings = UMEEmbeddings(model_name="ume-r1", mode="discriminative")
            texts = embeddings.embed_documents(["A red fox jumps over a fence."])
            images = embeddings.embed_image(uris=["photos/fox.jpg"])
            query = embeddings.embed_query("a fox")
    """

    model_config = ConfigDict(arbitrary_types_allowed=True, extra="forbid", protected_namespaces=())

    model_name: str = Field(default="ume-r1", description="Alias, hub id or path of a UME-R1 checkpoint.")
    mode: str | None = Field(
        default=None, description="'generative', 'discriminative' or 'both'; None keeps the model's saved mode."
    )
    query_instruction: str | None = Field(
        default=None, description="Instruction for queries; None uses the model's 'query' prompt."
    )
    document_instruction: str | None = Field(
        default=None, description="Instruction for documents and images; None uses the model's 'document' prompt."
    )
    batch_size: int = Field(default=32, gt=0, description="Inputs per forward pass or rollout.")
    device: str | None = Field(default=None, description="Device to load the model on; None picks the best.")
    model_kwargs: dict[str, Any] = Field(
        default_factory=dict, description="Passed to `ume_plugins.load` (module settings, SentenceTransformer args)."
    )
    encode_kwargs: dict[str, Any] = Field(
        default_factory=dict, description="Passed to `encode` (e.g. `generation_kwargs`, `show_progress_bar`)."
    )
    model: SentenceTransformer | None = Field(
        default=None, exclude=True, repr=False, description="An already loaded UME-R1 model; then used as is."
    )

    @model_validator(mode="after")
    def _load_model(self) -> Self:
        if self.model is None:
            self.model = ume_plugins.load(self.model_name, mode=self.mode, device=self.device, **self.model_kwargs)
        return self

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        """Embed texts as documents."""
        return self.embed_inputs([{"text": text} for text in texts])

    def embed_query(self, text: str) -> list[float]:
        """Embed a text as a query."""
        return self.embed_inputs([{"text": text}], as_query=True)[0]

    def embed_image(self, uris: list[str]) -> list[list[float]]:
        """Embed images, given as file paths, http(s) URLs or ``data:`` URIs, as documents."""
        return self.embed_inputs([{"image": uri} for uri in uris])

    def embed_inputs(self, inputs: Sequence[Any], *, as_query: bool = False) -> list[list[float]]:
        """Embed any inputs ``ume_plugins`` accepts, such as fused ``{"text": ..., "image": ...}`` dicts.

        Args:
            inputs: Texts, image paths/URLs, PIL images, dicts with ``text``/``image``/``video``, ...
            as_query: Use the query instruction instead of the document one.

        Returns:
            One vector per input.

        Raises:
            ume_plugins.UMEInputError: An input could not be read; names its index.
        """
        if as_query:
            encode, instruction = self.model.encode_query, self.query_instruction
        else:
            encode, instruction = self.model.encode_document, self.document_instruction
        vectors = encode(
            list(inputs), prompt=instruction, mode=self.mode, batch_size=self.batch_size, **self.encode_kwargs
        )
        return vectors.tolist()

    async def aembed_image(self, uris: list[str]) -> list[list[float]]:
        """Async :meth:`embed_image` (runs in an executor)."""
        return await run_in_executor(None, self.embed_image, uris)

    async def aembed_inputs(self, inputs: Sequence[Any], *, as_query: bool = False) -> list[list[float]]:
        """Async :meth:`embed_inputs` (runs in an executor)."""
        return await run_in_executor(None, self.embed_inputs, inputs, as_query=as_query)
