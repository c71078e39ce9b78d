"""The input policy is the caller's: load-time arguments with safe defaults, never read from a saved folder."""

from __future__ import annotations

import json
import logging

import pytest
from sentence_transformers import SentenceTransformer

import ume_plugins
from tests.conftest import gradient
from ume_plugins import UMEInputError
from ume_plugins.fetch import FetchPolicy
from ume_plugins.policy import POLICY_OPTIONS, InputPolicy

LOOSE = {
    "allow_network": True,
    "allow_file_urls": True,
    "url_timeout": 999.0,
    "max_url_bytes": 10**12,
    "max_decoded_pixels": 10**12,
}


def test_defaults_refuse_file_urls_and_cap_urls_and_pixels():
    policy = InputPolicy()
    assert not policy.allow_file_urls and policy.max_decoded_pixels == 128 * 1024 * 1024
    assert policy.fetch == FetchPolicy() and policy.fetch.timeout == 10.0 and policy.fetch.max_bytes == 64 * 1024**2


def test_options_map_onto_the_policy_and_back():
    policy = InputPolicy().with_options(**LOOSE)
    assert policy.as_options() == LOOSE and set(LOOSE) == set(POLICY_OPTIONS)
    with pytest.raises(ValueError, match="unknown input policy option"):
        InputPolicy().with_options(allow_everything=True)
    with pytest.raises(ValueError, match="must be positive"):
        InputPolicy().with_options(max_decoded_pixels=0)


@pytest.fixture(scope="module")
def loose_folder(tmp_path_factory):
    """A saved model whose settings file asks for every loosening an older version could save."""
    folder = tmp_path_factory.mktemp("loose") / "model"
    ume_plugins.load("ume-r1-tiny", device="cpu", mode="discriminative", allow_file_urls=True).save(str(folder))
    settings_file = folder / "ume_r1_config.json"
    assert not set(POLICY_OPTIONS) & set(json.loads(settings_file.read_text()))  # the policy is never saved
    settings_file.write_text(json.dumps({**json.loads(settings_file.read_text()), **LOOSE}))
    return folder


@pytest.mark.parametrize("route", ["SentenceTransformer", "ume_plugins.load"])
def test_a_saved_folder_cannot_loosen_the_policy(loose_folder, tmp_path, route, caplog):
    gradient().save(tmp_path / "local.png")
    with caplog.at_level(logging.WARNING, logger="ume_plugins"):
        if route == "SentenceTransformer":
            model = SentenceTransformer(str(loose_folder), device="cpu")
        else:
            model = ume_plugins.load(str(loose_folder), device="cpu")
    assert model[0].policy == InputPolicy()
    assert "these are the caller's choices, never a saved folder's" in caplog.text
    with pytest.raises(UMEInputError, match="file:// URLs are disabled"):
        model.encode([f"file://{tmp_path / 'local.png'}"])


def test_the_caller_can_allow_what_the_folder_cannot(loose_folder, tmp_path):
    gradient().save(tmp_path / "local.png")
    model = ume_plugins.load(str(loose_folder), device="cpu", allow_file_urls=True)
    assert model.encode(f"file://{tmp_path / 'local.png'}").shape == (64,)
