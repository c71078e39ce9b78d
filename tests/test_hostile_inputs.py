"""The hostile-input corpus (``tests/hostile.py``): every case embeds or fails exactly as documented.

``.venv/bin/python -m tests.hostile`` prints the corpus table (case -> outcome).
"""

from __future__ import annotations

import numpy as np
import pytest

from tests.hostile import CASES, VECTOR, corpus_model, hostile_env, outcome_of
from ume_plugins import UMEInputError

FAILING = [case for case in CASES if not case.embeds]


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    with hostile_env(tmp_path_factory.mktemp("hostile")) as env:
        yield env


@pytest.fixture(scope="module")
def corpus():
    return corpus_model()


def test_the_corpus_covers_at_least_forty_distinct_cases():
    assert len(CASES) >= 40
    assert len({case.name for case in CASES}) == len(CASES)
    assert {case.group for case in CASES} == {"file", "image", "text", "structure", "video", "url"}


@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
def test_each_case_gives_a_unit_vector_or_the_documented_error(case, corpus, env):
    outcome, vector = outcome_of(corpus, case.make(env))
    if not case.embeds:
        assert outcome.startswith("UMEInputError: Input 0: ") and case.outcome in outcome, outcome
        return
    assert outcome == VECTOR
    assert vector.dtype == np.float32 and np.isfinite(vector).all()
    assert np.linalg.norm(vector) == pytest.approx(1.0, abs=1e-5)
    if case.same_as is not None:
        _, expected = outcome_of(corpus, case.same_as(env))
        np.testing.assert_allclose(vector, expected, atol=1e-6)


@pytest.mark.parametrize("case", FAILING, ids=[case.name for case in FAILING])
def test_one_bad_input_fails_its_batch_before_any_forward_pass(case, corpus, env):
    forward_calls = []
    hook = corpus[0].register_forward_pre_hook(lambda module, args: forward_calls.append(1))
    batch = ["a red fox", env.file("photo.png"), case.make(env), {"text": "a dog", "image": env.file("gray.png")}]
    try:
        with pytest.raises(UMEInputError) as raised:
            corpus.encode(batch, batch_size=8, show_progress_bar=False)
    finally:
        hook.remove()
    assert raised.value.index == 2
    assert str(raised.value).startswith("Input 2: ") and case.outcome in str(raised.value)
    assert forward_calls == []


def test_blank_text_is_embedded_with_a_warning_naming_it(corpus, caplog):
    with caplog.at_level("WARNING", logger="ume_plugins"):
        corpus.encode(["a fox", "   "], show_progress_bar=False)
    assert "Input 1: empty or blank text" in caplog.text
