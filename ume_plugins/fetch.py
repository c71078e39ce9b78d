"""Fetching media from http(s) URLs: the only place the package touches the network."""

from __future__ import annotations

import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from email.message import Message

from ume_plugins.errors import UMEInputError

_ACCEPTED_CONTENT_TYPES = ("image/", "video/", "application/octet-stream")
_CHUNK_BYTES = 1 << 16


@dataclass(frozen=True)
class FetchPolicy:
    """What URL inputs may do.

    Attributes:
        allow_network: Fetch http(s) URLs at all. When False, URL inputs are rejected.
        timeout: Seconds to wait for the connection and for each read.
        max_bytes: Largest accepted response body.
        max_redirects: Redirects followed before giving up.
    """

    allow_network: bool = True
    timeout: float = 10.0
    max_bytes: int = 64 * 1024 * 1024
    max_redirects: int = 3


class _LimitedRedirects(urllib.request.HTTPRedirectHandler):
    def __init__(self, max_redirects: int) -> None:
        self.max_redirections = max_redirects

    def redirect_request(
        self, req: urllib.request.Request, fp, code: int, msg: str, headers: Message, newurl: str
    ) -> urllib.request.Request | None:
        if urllib.parse.urlsplit(newurl).scheme not in ("http", "https"):
            raise UMEInputError(f"URL redirected to a non-http(s) location {newurl!r}")
        return super().redirect_request(req, fp, code, msg, headers, newurl)


def fetch_url(url: str, policy: FetchPolicy) -> bytes:
    """Download the body of an image or video URL.

    Args:
        url: An ``http://`` or ``https://`` URL.
        policy: Network permissions and limits.

    Returns:
        The response body.

    Raises:
        UMEInputError: Network forbidden, bad scheme, HTTP error, timeout, unexpected content type
            (e.g. an HTML page) or a body larger than ``policy.max_bytes``.
    """
    if not policy.allow_network:
        raise UMEInputError(f"URL {url!r} given but network access is disabled (allow_network=False)")
    if urllib.parse.urlsplit(url).scheme not in ("http", "https"):
        raise UMEInputError(f"only http(s) URLs can be fetched, got {url!r}")
    opener = urllib.request.build_opener(_LimitedRedirects(policy.max_redirects))
    request = urllib.request.Request(url, headers={"User-Agent": "ume-plugins"})
    try:
        with opener.open(request, timeout=policy.timeout) as response:
            content_type = response.headers.get_content_type()
            if not content_type.startswith(_ACCEPTED_CONTENT_TYPES):
                raise UMEInputError(f"URL {url!r} returned {content_type!r}, not an image or video")
            declared = response.headers.get("Content-Length")
            if declared is not None and declared.isdigit() and int(declared) > policy.max_bytes:
                raise UMEInputError(f"URL {url!r} body of {declared} bytes exceeds the {policy.max_bytes}-byte cap")
            return _read_capped(response, url, policy.max_bytes)
    except UMEInputError:
        raise
    except urllib.error.HTTPError as error:
        raise UMEInputError(f"URL {url!r} answered HTTP {error.code}") from None
    except (urllib.error.URLError, TimeoutError, OSError) as error:
        reason = getattr(error, "reason", error)
        raise UMEInputError(f"URL {url!r} could not be fetched: {reason}") from None


def _read_capped(response, url: str, max_bytes: int) -> bytes:
    body = bytearray()
    while chunk := response.read(_CHUNK_BYTES):
        body += chunk
        if len(body) > max_bytes:
            raise UMEInputError(f"URL {url!r} body exceeds the {max_bytes}-byte cap")
    return bytes(body)
