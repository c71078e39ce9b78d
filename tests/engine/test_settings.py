from __future__ import annotations

import pytest

import ume_plugins


def test_engine_settings_reach_the_engine_and_survive_save_and_load(tmp_path, tiny_path):
    settings = {"max_slots": 3, "thinking_budget": 5, "answer_budget": 2, "decode_compile": "eager"}
    model = ume_plugins.load("ume-r1-tiny", device="cpu", **settings)
    spec = model[0].engine().spec
    assert (spec.max_slots, spec.thinking_budget, spec.answer_budget, spec.compile) == (3, 5, 2, "eager")
    model.save(str(tmp_path / "saved"))
    again = ume_plugins.load(str(tmp_path / "saved"), device="cpu")[0]
    assert {key: getattr(again, key) for key in settings} == settings
    row = model.encode(["a cat"], output_value=None, generation_kwargs={"max_new_tokens": 12})[0]
    assert bool(row["answer_forced"])  # the tiny model never closes its thinking: the budget did


@pytest.mark.parametrize(
    ("setting", "message"),
    [
        ({"max_slots": 0}, "max_slots must be positive"),
        ({"thinking_budget": 0}, "thinking_budget must be positive or None"),
        ({"answer_budget": -1}, "answer_budget must be >= 0"),
        ({"decode_compile": "fast"}, "decode_compile must be one of"),
        ({"thinking_budget": 8, "backend": "vllm"}, "thinking_budget needs backend='hf'"),
    ],
)
def test_bad_engine_settings_are_refused_by_name(tiny_path, setting, message, monkeypatch):
    from ume_plugins.engine import vllm

    monkeypatch.setattr(vllm, "is_vllm_available", lambda: True)  # the settings are checked, not the install
    with pytest.raises(ValueError, match=message):
        ume_plugins.load("ume-r1-tiny", device="cpu", **setting)
