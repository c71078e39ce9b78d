"""LangChain's own standard checks for embeddings, run against the tiny random checkpoint."""

from __future__ import annotations

from typing import Any

import pytest
from langchain_tests.integration_tests import EmbeddingsIntegrationTests
from langchain_tests.unit_tests import EmbeddingsUnitTests

from langchain_ume import UMEEmbeddings

TINY_PARAMS = {"model_name": "ume-r1-tiny", "mode": "discriminative", "device": "cpu"}


class TestUMEEmbeddingsUnit(EmbeddingsUnitTests):
    @property
    def embeddings_class(self) -> type[UMEEmbeddings]:
        return UMEEmbeddings

    @property
    def embedding_model_params(self) -> dict[str, Any]:
        return TINY_PARAMS


class TestUMEEmbeddingsIntegration(EmbeddingsIntegrationTests):
    # The suite's async checks are bare `async def` methods (partner packages run asyncio in auto mode).
    pytestmark = [
        pytest.mark.asyncio,
        pytest.mark.filterwarnings("ignore:.*marked with '@pytest.mark.asyncio' but it is not an async function"),
    ]

    @property
    def embeddings_class(self) -> type[UMEEmbeddings]:
        return UMEEmbeddings

    @property
    def embedding_model_params(self) -> dict[str, Any]:
        return TINY_PARAMS
