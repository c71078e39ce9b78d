"""The published checkpoints themselves: need the hub (or a warm cache) and, in practice, a GPU."""

from __future__ import annotations

import numpy as np
import pytest

import ume_plugins
from ume_plugins.checkpoints import UME_R1_2B, UME_R1_7B

pytestmark = pytest.mark.slow


@pytest.mark.parametrize(("name", "checkpoint"), [("ume-r1", UME_R1_2B), ("ume-r1-7b", UME_R1_7B)])
def test_published_checkpoint_embeds_in_both_modes(name, checkpoint):
    model = ume_plugins.load(name, max_new_tokens=1024)
    assert model.get_embedding_dimension() == checkpoint.embed_dim
    inputs = ["A red fox jumps over a fence.", {"text": "a fox", "image": np.full((224, 224, 3), 200, np.uint8)}]
    disc = model.encode(inputs, mode="discriminative")
    result = ume_plugins.encode_with_reasoning(model, inputs)
    for vectors in (disc, result.embeddings):
        assert vectors.shape == (2, checkpoint.embed_dim) and np.isfinite(vectors).all()
    assert all("<gen_emb>" in text for text in result.reasoning)
    assert result.forced == [False, False]
