from __future__ import annotations

import io
import logging

import numpy as np
import pytest
import torch

import ume_plugins
from tests.conftest import REASONING, ScriptedDecoding, gradient, solid
from ume_plugins import GenEmbMissingError, UMEInputError
from ume_plugins.vectors import normalised


def mixed_inputs():
    return [
        "a red fox jumps over the fence",
        gradient((84, 56), seed=1),
        {"text": "what is shown?", "image": gradient((64, 64), seed=2)},
        {"text": "compare", "image": [solid((200, 0, 0), (56, 56)), gradient((70, 70), seed=3)]},
        {"video": [solid((40 * i, 50, 60), (56, 56)) for i in range(4)]},
        "short",
    ]


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.sum(a * b, axis=1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


@pytest.fixture(scope="module")
def scripted(module):
    return ScriptedDecoding(module.tokenizer, REASONING)


@pytest.mark.parametrize("mode", ["discriminative", "generative"])
def test_vectors_are_unit_float32_of_the_hidden_size(model, mode):
    vectors = model.encode(mixed_inputs(), mode=mode, generation_kwargs={"max_new_tokens": 4})
    assert vectors.shape == (6, model.get_embedding_dimension()) == (6, 64)
    assert vectors.dtype == np.float32 and np.isfinite(vectors).all()
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)


def test_default_mode_is_generative_and_a_call_can_override_it(model, scripted):
    assert model[0].mode == "generative"
    kwargs = {"generation_kwargs": {"logits_processor": [scripted]}}
    default = model.encode(["a cat"], **kwargs)
    assert np.allclose(default, model.encode(["a cat"], mode="generative", **kwargs))
    disc = model.encode(["a cat"], mode="discriminative")
    assert cosines(default, disc)[0] < 0.99


def test_mixed_batch_equals_items_one_by_one_in_discriminative_mode(model):
    inputs = mixed_inputs()
    batched = model.encode(inputs, mode="discriminative", batch_size=len(inputs))
    single = np.stack([model.encode(item, mode="discriminative") for item in inputs])
    assert cosines(batched, single).min() >= 0.9999


def test_mixed_batch_equals_items_one_by_one_in_generative_mode(model, scripted):
    inputs = mixed_inputs()
    kwargs = {"mode": "generative", "generation_kwargs": {"logits_processor": [scripted]}}
    batched = model.encode(inputs, batch_size=len(inputs), **kwargs)
    single = np.stack([model.encode(item, **kwargs) for item in inputs])
    assert cosines(batched, single).min() >= 0.9999


def test_free_greedy_rollouts_are_the_same_batched_and_alone(model):
    inputs = mixed_inputs()
    kwargs = {"generation_kwargs": {"max_new_tokens": 6}}
    batched = ume_plugins.encode_with_reasoning(model, inputs, batch_size=len(inputs), **kwargs)
    single = [ume_plugins.encode_with_reasoning(model, [item], **kwargs) for item in inputs]
    assert batched.reasoning == [result.reasoning[0] for result in single]
    alone = np.concatenate([result.embeddings for result in single])
    assert cosines(batched.embeddings, alone).min() >= 0.9999


def test_stopping_the_prompt_after_disc_emb_leaves_the_vector_unchanged(model, module):
    inputs = mixed_inputs()
    truncated = module.preprocess(inputs, mode="discriminative")
    full = module.preprocess(inputs, mode="both")
    assert (truncated["input_ids"][:, -1] == module.disc_emb_id).all()
    assert truncated["input_ids"].shape[1] < full["input_ids"].shape[1]
    disc = model.encode(inputs, mode="discriminative")
    rows = model.encode(inputs, mode="both", output_value=None, generation_kwargs={"max_new_tokens": 2})
    from_full_prompt = np.stack([row["disc_embedding"].numpy() for row in rows])
    assert cosines(disc, from_full_prompt).min() >= 0.9999


def test_generation_kwargs_reach_generate_and_reasoning_comes_back(model, scripted):
    result = ume_plugins.encode_with_reasoning(
        model, ["a cat", solid((9, 90, 200))], generation_kwargs={"logits_processor": [scripted]}
    )
    assert result.reasoning == [REASONING, REASONING]
    assert result.forced == [False, False]
    assert result.embeddings.shape == (2, 64)


def test_sampling_follows_the_seed(model):
    kwargs = {"generation_kwargs": {"do_sample": True, "temperature": 1.5, "max_new_tokens": 8}}
    torch.manual_seed(0)
    first = ume_plugins.encode_with_reasoning(model, ["a cat"], **kwargs)
    torch.manual_seed(0)
    again = ume_plugins.encode_with_reasoning(model, ["a cat"], **kwargs)
    assert first.reasoning == again.reasoning
    assert np.allclose(first.embeddings, again.embeddings)


def test_a_rollout_without_gen_emb_appends_it_and_is_flagged(model, module, caplog):
    long_script = "<think> one two three four five six seven eight nine ten"
    budget = 5
    cut = module.tokenizer(long_script, add_special_tokens=False)["input_ids"][:budget]
    with caplog.at_level(logging.WARNING, logger="ume_plugins"):
        forced = ume_plugins.encode_with_reasoning(
            model,
            ["a cat"],
            generation_kwargs={
                "logits_processor": [ScriptedDecoding(module.tokenizer, long_script)],
                "max_new_tokens": budget,
            },
        )
    assert forced.forced == [True]
    assert "ended without writing <gen_emb>" in caplog.text
    # Same as a rollout that wrote exactly those tokens and then <gen_emb> itself.
    written = ume_plugins.encode_with_reasoning(
        model,
        ["a cat"],
        generation_kwargs={
            "logits_processor": [ScriptedDecoding(module.tokenizer, module.tokenizer.decode(cut) + "<gen_emb>")]
        },
    )
    assert written.forced == [False]
    assert cosines(forced.embeddings, written.embeddings)[0] >= 0.9999


def test_gen_emb_written_as_the_last_budgeted_token_is_not_forced(model, module):
    script = "<think> x </think><gen_emb>"
    length = len(module.tokenizer(script, add_special_tokens=False)["input_ids"])
    processor = ScriptedDecoding(module.tokenizer, script)
    exact = ume_plugins.encode_with_reasoning(
        model, ["a cat"], generation_kwargs={"logits_processor": [processor], "max_new_tokens": length}
    )
    roomy = ume_plugins.encode_with_reasoning(model, ["a cat"], generation_kwargs={"logits_processor": [processor]})
    assert exact.forced == roomy.forced == [False]
    assert cosines(exact.embeddings, roomy.embeddings)[0] >= 0.9999


def test_missing_gen_emb_can_raise_instead(tiny_path):
    model = ume_plugins.load("ume-r1-tiny", device="cpu", on_missing_gen_emb="raise")
    with pytest.raises(GenEmbMissingError, match="ended without writing <gen_emb> .* the 3-token budget"):
        model.encode(["a cat"], generation_kwargs={"max_new_tokens": 3})


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"num_beams": 2}, "beam search"),
        ({"output_hidden_states": True}, "without keeping per-step hidden states"),
        ({"max_new_tokenz": 3}, "unknown generation_kwargs"),
    ],
)
def test_generation_kwargs_that_cannot_work_are_rejected(model, kwargs, message):
    with pytest.raises(ValueError, match=message):
        model.encode(["a cat"], generation_kwargs=kwargs)


def test_instructions_come_from_prompts_or_the_call(tiny_path):
    model = ume_plugins.load(
        "ume-r1-tiny", device="cpu", mode="discriminative", prompts={"query": "Find a picture:", "document": ""}
    )
    query = model.encode_query(["a red circle"])
    assert np.allclose(query, model.encode(["a red circle"], prompt="Find a picture:"), atol=1e-6)
    assert np.allclose(query, model.encode(["Find a picture: a red circle"]), atol=1e-6)
    assert np.allclose(model.encode_document(["a red circle"]), model.encode(["a red circle"]), atol=1e-6)
    image = solid((200, 0, 0))
    with_instruction = model.encode([image], prompt="Find a picture:")
    assert np.allclose(with_instruction, model.encode([{"text": "Find a picture:", "image": image}]), atol=1e-6)


def test_blank_image_for_text_is_an_option(tiny_path, module):
    plain = ume_plugins.load("ume-r1-tiny", device="cpu", mode="discriminative", blank_image_for_text=False)
    features = plain[0].preprocess(["a cat"])
    assert "pixel_values" not in features
    assert "pixel_values" in module.preprocess(["a cat"], mode="discriminative")


def test_errors_name_the_index_in_the_callers_list(model):
    with pytest.raises(UMEInputError, match=r"^Input 2: unknown dict key"):
        model.encode(["fine", "also fine", {"txt": "typo"}], mode="discriminative")
    broken = io.BytesIO(b"\x89PNG\r\n\x1a\n broken")
    with pytest.raises(UMEInputError, match=r"^Input 3: cannot decode image"):
        model.encode(["a", "a much longer text than the rest", "b", broken], mode="discriminative", batch_size=1)


def test_a_bad_input_fails_before_any_batch_runs(model, module):
    calls = []
    handle = module.model.register_forward_hook(lambda *args: calls.append(1))
    try:
        with pytest.raises(UMEInputError, match="^Input 40: "):
            model.encode([f"text {i}" for i in range(40)] + [None], mode="discriminative", batch_size=4)
    finally:
        handle.remove()
    assert calls == []


def test_non_finite_states_raise_instead_of_returning_nan(module):
    with pytest.raises(FloatingPointError, match="non-finite embedding for batch rows \\[1\\]"):
        normalised(torch.tensor([[1.0, 0.0], [float("nan"), 1.0]]), module.model)
