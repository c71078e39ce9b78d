"""UMESentenceTransformer: what UME-R1 adds to SentenceTransformer, and each encode option of sentence-transformers."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
from sentence_transformers import SentenceTransformer

import ume_plugins
from tests.conftest import REASONING, ScriptedDecoding, gradient, solid
from ume_plugins.model import UMESentenceTransformer
from ume_plugins.prompts import NAMED_PROMPTS

DISC = {"mode": "discriminative"}
INPUTS = ["a red fox", gradient((84, 56), seed=3), {"text": "a fox", "image": solid((200, 30, 30))}]


def test_both_routes_give_our_model_with_the_named_prompts(model):
    assert isinstance(model, UMESentenceTransformer)
    assert model.prompts == {"query": "", "document": "", **NAMED_PROMPTS}
    assert model.modalities == ["text", "image", "video", "message"]


def test_encode_query_and_document_default_to_encode(model):
    np.testing.assert_allclose(model.encode_query(INPUTS, **DISC), model.encode(INPUTS, **DISC), atol=1e-6)
    np.testing.assert_allclose(model.encode_document(INPUTS, **DISC), model.encode(INPUTS, **DISC), atol=1e-6)


def test_a_named_prompt_is_its_mmeb_instruction(model):
    instruction = NAMED_PROMPTS["video_retrieval_query"]
    named = model.encode_query(["a dog runs"], prompt_name="video_retrieval_query", **DISC)
    np.testing.assert_allclose(named, model.encode(["a dog runs"], prompt=instruction, **DISC), atol=1e-6)
    assert not np.allclose(named, model.encode(["a dog runs"], **DISC), atol=1e-3)


def test_a_single_input_gives_one_vector_as_in_a_list(model):
    single = model.encode(INPUTS[2], **DISC)
    assert single.shape == (64,)
    np.testing.assert_allclose(single, model.encode([INPUTS[2]], **DISC)[0], atol=1e-6)


def test_encode_with_reasoning_treats_a_single_input_as_encode_does(model, module):
    kwargs = {"generation_kwargs": {"logits_processor": [ScriptedDecoding(module.tokenizer, REASONING)]}}
    single = ume_plugins.encode_with_reasoning(model, "hello", **kwargs)
    assert single.embeddings.shape == (64,) and single.reasoning == REASONING and single.forced is False
    listed = ume_plugins.encode_with_reasoning(model, ["hello"], **kwargs)
    assert listed.embeddings.shape == (1, 64) and listed.reasoning == [REASONING]
    np.testing.assert_allclose(single.embeddings, listed.embeddings[0], atol=1e-6)


@pytest.mark.parametrize("precision", ["int8", "uint8", "binary", "ubinary"])
def test_precision_quantises_as_documented(model, precision):
    vectors = model.encode(INPUTS, precision=precision, **DISC)
    assert vectors.shape == (3, 64 // 8 if "binary" in precision else 64)
    assert vectors.dtype == (np.int8 if precision in ("int8", "binary") else np.uint8)


def test_tensor_output_stays_on_the_models_device(model):
    vectors = model.encode(INPUTS, convert_to_tensor=True, **DISC)
    assert isinstance(vectors, torch.Tensor) and vectors.device == model.device and vectors.shape == (3, 64)
    rows = model.encode(INPUTS, convert_to_numpy=False, **DISC)
    assert isinstance(rows, list) and all(row.shape == (64,) for row in rows)


def test_truncate_dim_and_normalize_embeddings(model):
    full = model.encode(INPUTS, **DISC)
    np.testing.assert_allclose(model.encode(INPUTS, truncate_dim=16, **DISC), full[:, :16], atol=1e-6)
    renormed = model.encode(INPUTS, truncate_dim=16, normalize_embeddings=True, **DISC)
    np.testing.assert_allclose(np.linalg.norm(renormed, axis=1), 1.0, atol=1e-5)


def test_output_value_gives_the_modes_outputs(model):
    rows = model.encode(INPUTS[:2], output_value=None, mode="both", generation_kwargs={"max_new_tokens": 2})
    assert set(rows[0]) == {
        "sentence_embedding",
        "sample_embeddings",
        "generated_ids",
        "gen_emb_forced",
        "answer_forced",
        "disc_embedding",
    }
    disc = model.encode(INPUTS[:2], output_value="disc_embedding", mode="both", generation_kwargs={"max_new_tokens": 2})
    assert [vector.shape for vector in disc] == [(64,), (64,)]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"output_value": "token_embeddings", **DISC}, "not a pooling of token embeddings"),
        ({"output_value": "disc_embedding", **DISC}, "not an output of discriminative mode"),
        ({"output_value": "sample_embeddings", **DISC}, "not an output of discriminative mode"),
        ({"processing_kwargs": {"image": {"max_pixels": 10}}, **DISC}, "processing_kwargs is not supported"),
        ({"temperature": 0.5}, "additional keyword arguments that this model does not use"),
        ({"output_value": "sample_embeddings", "normalize_embeddings": True}, "L2-normalised already"),
    ],
)
def test_options_that_cannot_work_are_refused_before_any_batch_runs(model, kwargs, message):
    calls = []
    handle = model[0].model.register_forward_hook(lambda *args: calls.append(1))
    try:
        with pytest.raises(ValueError, match=message):
            model.encode(INPUTS, **kwargs)
    finally:
        handle.remove()
    assert calls == []


def test_chat_messages_are_inputs_like_their_dicts(model):
    image = solid((200, 30, 30))
    message = {"role": "user", "content": [{"type": "text", "text": "a fox"}, {"type": "image", "image": image}]}
    expected = model.encode({"text": "a fox", "image": image}, **DISC)
    np.testing.assert_allclose(model.encode(message, **DISC), expected, atol=1e-6)
    np.testing.assert_allclose(model.encode([message], **DISC), expected, atol=1e-6)  # one conversation
    np.testing.assert_allclose(model.encode([[message], "x"], **DISC)[0], expected, atol=1e-6)


def test_the_forced_gen_emb_warning_is_said_once_per_call_with_the_total(model, caplog):
    with caplog.at_level(logging.WARNING, logger="ume_plugins"):
        model.encode(["a", "bb", "ccc"], batch_size=1, generation_kwargs={"max_new_tokens": 2})
    warnings = [record.getMessage() for record in caplog.records if "without writing <gen_emb>" in record.getMessage()]
    assert warnings == [
        "3 of 3 rollouts ended without writing <gen_emb> (at an end-of-sequence token, at the 2-token budget or "
        "at their answer budget): <gen_emb> was appended after their reasoning (flagged as gen_emb_forced)."
    ]


@pytest.mark.parametrize("route", ["ume_plugins.load", "SentenceTransformer"])
def test_loading_the_tiny_checkpoint_warns_once_that_its_weights_are_random(tiny_path, route, caplog):
    with caplog.at_level(logging.WARNING, logger="ume_plugins"):
        if route == "ume_plugins.load":
            ume_plugins.load("ume-r1-tiny", device="cpu")
        else:
            SentenceTransformer("ume-r1-tiny", device="cpu")
    assert [record.getMessage() for record in caplog.records].count(
        "This UME-R1 checkpoint (ume-r1-tiny) has RANDOM weights: its vectors and reasoning are meaningless and "
        "only show that the pipeline runs. Load ume-r1 or ume-r1-7b for real embeddings."
    ) == 1


def test_multi_process_encoding_gives_the_same_vectors(tiny_path):
    # A fresh model: a forward with output_hidden_states=True (as the reference tests run) leaves
    # transformers 5.24's output-capturing hooks, local functions that cannot be pickled, on any model.
    fresh = ume_plugins.load("ume-r1-tiny", device="cpu", mode="discriminative")
    parallel = fresh.encode(INPUTS, device=["cpu"])  # one worker process, fed pickled parsed inputs
    np.testing.assert_allclose(parallel, fresh.encode(INPUTS), atol=1e-6)
