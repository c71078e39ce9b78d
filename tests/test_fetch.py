"""URL fetching rules, against a misbehaving server on 127.0.0.1 (the corpus covers the rest)."""

from __future__ import annotations

import pytest

from tests.conftest import gradient
from tests.hostile import hostile_server
from ume_plugins import UMEInputError
from ume_plugins.decoding import decode
from ume_plugins.fetch import FetchPolicy, fetch_url
from ume_plugins.inputs import parse
from ume_plugins.policy import InputPolicy
from ume_plugins.settings import EmbeddingSettings


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    folder = tmp_path_factory.mktemp("served")
    gradient((84, 56)).save(folder / "photo.png")
    with hostile_server(folder) as running:
        yield running.base_url, (folder / "photo.png").read_bytes()


def test_a_server_trickling_bytes_hits_the_download_deadline(server):
    base_url, _ = server
    with pytest.raises(UMEInputError, match="longer than the 0.3 s download deadline"):
        fetch_url(f"{base_url}/trickle.png", FetchPolicy(timeout=5, deadline=0.3))


def test_redirects_are_followed_up_to_the_limit(server):
    base_url, photo = server
    assert fetch_url(f"{base_url}/redirect/2", FetchPolicy(max_redirects=2)) == photo
    with pytest.raises(UMEInputError, match="redirected more than 1 times"):
        fetch_url(f"{base_url}/redirect/2", FetchPolicy(max_redirects=1))


@pytest.mark.parametrize("url", ["ftp://127.0.0.1/photo.png", "file:///etc/hostname"])
def test_only_http_urls_are_fetched(url):
    with pytest.raises(UMEInputError, match="only http"):
        fetch_url(url, FetchPolicy())


def test_no_network_refuses_urls_before_any_connection(server):
    base_url, _ = server
    offline = InputPolicy(fetch=FetchPolicy(allow_network=False))
    with pytest.raises(UMEInputError, match="network access is disabled"):
        parse(f"{base_url}/photo.png", 0, offline)
    with pytest.raises(UMEInputError, match="network access is disabled"):
        parse({"video": f"{base_url}/clip.mp4"}, 0, offline)
    with pytest.raises(UMEInputError, match="network access is disabled"):
        fetch_url(f"{base_url}/photo.png", offline.fetch)


def test_file_urls_resolve_only_when_allowed(server, tmp_path):
    gradient((84, 56)).save(tmp_path / "local.png")
    url = f"file://{tmp_path / 'local.png'}"
    with pytest.raises(UMEInputError, match="file:// URLs are disabled"):
        parse(url, 0, InputPolicy())
    allowed = InputPolicy(allow_file_urls=True)
    assert decode(parse(url, 0, allowed), allowed, EmbeddingSettings()).images[0].size == (84, 56)
