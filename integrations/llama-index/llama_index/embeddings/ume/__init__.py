"""LlamaIndex multimodal embeddings integration for UME-R1."""

from __future__ import annotations

from llama_index.embeddings.ume.base import UMEEmbedding

__all__ = ["UMEEmbedding"]
