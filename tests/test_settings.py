"""The saved embedding settings: one frozen object, checked on every change."""

from __future__ import annotations

import logging

import pytest

from ume_plugins.settings import DEFAULT_SETTINGS, SETTING_NAMES, EmbeddingSettings


def test_defaults_are_the_official_eval_values():
    assert DEFAULT_SETTINGS.mode == "generative"
    assert (DEFAULT_SETTINGS.min_pixels, DEFAULT_SETTINGS.max_pixels) == (3136, 12_845_056)
    assert (DEFAULT_SETTINGS.processor_min_pixels, DEFAULT_SETTINGS.processor_max_pixels) == (784, 2_359_296)
    assert DEFAULT_SETTINGS.num_frames == 8 and DEFAULT_SETTINGS.max_new_tokens == 8192
    assert DEFAULT_SETTINGS.blank_image_for_text and DEFAULT_SETTINGS.on_missing_gen_emb == "force"


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"mode": "fast"}, "mode must be one of"),
        ({"on_missing_gen_emb": "skip"}, "on_missing_gen_emb must be one of"),
        ({"min_pixels": 10, "max_pixels": 5}, "pixel bounds"),
        ({"num_frames": 0}, "num_frames must be positive"),
        ({"max_new_tokens": 0}, "max_new_tokens must be positive"),
        ({"max_length": 0}, "max_length must be positive"),
        ({"allow_network": False}, "unknown UME-R1 setting"),
    ],
)
def test_invalid_settings_are_refused(changes, message):
    with pytest.raises(ValueError, match=message):
        DEFAULT_SETTINGS.replace(**changes)


def test_saved_runtime_and_unknown_keys_are_ignored_with_a_warning(caplog):
    saved = {"mode": "both", "allow_file_urls": True, "vllm_kwargs": {"trust_remote_code": True}, "future_key": 1}
    with caplog.at_level(logging.WARNING, logger="ume_plugins"):
        settings = EmbeddingSettings.from_config(saved, "some/folder")
    assert settings == DEFAULT_SETTINGS.replace(mode="both")
    assert "Ignoring ['allow_file_urls', 'vllm_kwargs'] saved in some/folder" in caplog.text
    assert "Ignoring unknown UME-R1 settings ['future_key']" in caplog.text


def test_settings_round_trip_through_their_saved_form():
    settings = DEFAULT_SETTINGS.replace(mode="discriminative", num_frames=None, max_length=100)
    assert list(settings.to_config()) == list(SETTING_NAMES)
    assert EmbeddingSettings.from_config(settings.to_config(), "x") == settings


def test_module_settings_read_as_attributes_and_are_checked_when_set(module):
    assert module.mode == module.settings.mode == "generative"
    before = module.settings
    with pytest.raises(ValueError, match="mode must be one of"):
        module.mode = "fast"
    assert module.settings is before
    assert module.get_config_dict() == before.to_config()
