"""LangChain integration for UME-R1 multimodal embeddings."""

from __future__ import annotations

from langchain_ume.embeddings import UMEEmbeddings

__all__ = ["UMEEmbeddings"]
