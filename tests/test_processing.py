"""Texts longer than the model's limit are cut, with a warning, and the prompt scaffolding survives."""

from __future__ import annotations

import numpy as np
import pytest

from tests.conftest import gradient
from ume_plugins import UMEInputError
from ume_plugins.prompts import GEN_PROMPT

LIMIT = 120
LONG = "the quick brown fox jumps over the lazy dog " * 300
HEAD = "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n<|vision_start|>"
TAIL = f"\n<disc_emb>\n{GEN_PROMPT}<|im_end|>\n<|im_start|>assistant\n"


@pytest.fixture(scope="module")
def limited():
    import ume_plugins

    return ume_plugins.load("ume-r1-tiny", device="cpu", mode="discriminative", max_length=LIMIT)


def rendered_rows(model, inputs, **kwargs) -> list[str]:
    features = model[0].preprocess(inputs, **kwargs)
    rows = zip(features["input_ids"], features["attention_mask"], strict=True)
    return [model[0].tokenizer.decode(ids[mask.bool()]) for ids, mask in rows]


def kept_text(rendered: str) -> str:
    return rendered.split("<|vision_end|>", 1)[1].split("\n<disc_emb>", 1)[0]


def test_an_over_long_text_is_cut_to_the_limit_and_the_prompt_tail_is_intact(limited, caplog):
    with caplog.at_level("WARNING", logger="ume_plugins"):
        short, long = rendered_rows(limited, ["short text", LONG], mode="generative")
    assert len(limited[0].tokenizer(long, add_special_tokens=False)["input_ids"]) == LIMIT
    assert long.startswith(HEAD) and long.endswith(TAIL)
    assert LONG.startswith(kept_text(long)) and len(kept_text(long)) > 40
    assert kept_text(short) == "short text" and short.endswith(TAIL)
    before, after = (len(limited[0].tokenizer(text)["input_ids"]) for text in (LONG, kept_text(long)))
    assert f"Input 1: text of {before} tokens truncated to {after} to fit max_length={LIMIT}" in caplog.text


def test_the_vector_of_an_over_long_text_is_that_of_its_truncation(limited):
    kept = kept_text(rendered_rows(limited, [LONG], mode="generative")[0])
    np.testing.assert_array_equal(limited.encode([LONG]), limited.encode([kept]))


def test_both_modes_see_the_same_truncated_text(limited):
    both = limited.encode([LONG], mode="both", output_value=None)[0]["disc_embedding"]
    np.testing.assert_allclose(both.cpu().numpy(), limited.encode([LONG], mode="discriminative")[0], atol=1e-5)


def test_the_instruction_is_kept_and_only_the_input_text_is_cut(limited):
    rendered = rendered_rows(limited, [LONG], prompt="Find the matching caption:", mode="discriminative")[0]
    assert kept_text(rendered).startswith("Find the matching caption: the quick brown fox")
    assert rendered.endswith("\n<disc_emb>")


def test_a_prompt_too_long_even_without_its_text_names_the_input(limited):
    with pytest.raises(UMEInputError, match=r"^Input 1: prompt exceeds max_length=120 tokens even without its text"):
        limited.encode(["fits", {"text": "too many pixels", "image": gradient((560, 560))}])


def test_the_default_limit_leaves_room_for_the_reasoning_budget(module):
    positions = module.model.config.text_config.max_position_embeddings
    assert module.max_length is None
    assert module.prompt_token_limit == module.max_seq_length == positions - module.max_new_tokens


def test_max_seq_length_reads_and_sets_the_prompt_limit_as_sentence_transformers_users_do(limited, tiny_path):
    import ume_plugins

    model = ume_plugins.load("ume-r1-tiny", device="cpu")
    model.max_seq_length = LIMIT  # SentenceTransformer's own property, forwarded to the module
    assert model[0].max_length == LIMIT and model.max_seq_length == LIMIT
    long_text = "word " * 400
    np.testing.assert_allclose(
        model.encode(long_text, mode="discriminative"), limited.encode(long_text, mode="discriminative")
    )
    model.max_seq_length = None
    assert model.max_seq_length == model[0].prompt_token_limit > LIMIT


def test_max_length_is_saved_validated_and_reloaded(limited, tmp_path):
    import ume_plugins

    limited.save(str(tmp_path))
    assert ume_plugins.load(str(tmp_path), device="cpu")[0].max_length == LIMIT
    with pytest.raises(ValueError, match="max_length must be positive"):
        limited[0].max_length = 0  # checked when set: the settings object is frozen
    assert limited[0].max_length == LIMIT
