"""Fetching media from http(s) URLs: the only place the package touches the network.

Every rule is checked here, so no URL input escapes it: only ``http``/``https`` (also after a
redirect, which is followed by hand and counted), a timeout on the connection and on each read, a
deadline for the whole download, a size cap (on the declared length and on the bytes actually
read) and an image/video content type.
"""

from __future__ import annotations

import http.client
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass

from ume_plugins.errors import UMEInputError

_ACCEPTED_CONTENT_TYPES = ("image/", "video/", "application/octet-stream", "binary/octet-stream")
_REDIRECT_CODES = frozenset({301, 302, 303, 307, 308})
_CHUNK_BYTES = 1 << 16


@dataclass(frozen=True)
class FetchPolicy:
    """What URL inputs may do.

    Attributes:
        allow_network: Fetch http(s) URLs at all. When False, URL inputs are rejected.
        timeout: Seconds to wait for the connection and for each read.
        max_bytes: Largest accepted response body.
        max_redirects: Redirects followed before giving up (each must stay on http(s)).
        deadline: Seconds allowed for a whole download, so that a server trickling bytes cannot
            hold a job forever.
    """

    allow_network: bool = True
    timeout: float = 10.0
    max_bytes: int = 64 * 1024 * 1024
    max_redirects: int = 3
    deadline: float = 120.0


class _NoRedirects(urllib.request.HTTPRedirectHandler):
    """Leaves 3xx answers to :func:`fetch_url`, which checks and counts every hop itself."""

    def redirect_request(self, *args, **kwargs) -> None:
        return None


def fetch_url(url: str, policy: FetchPolicy) -> bytes:
    """Download the body of an image or video URL.

    Args:
        url: An ``http://`` or ``https://`` URL.
        policy: Network permissions and limits.

    Returns:
        The response body.

    Raises:
        UMEInputError: Network forbidden, bad scheme, HTTP error, too many redirects or one to a
            non-http(s) location, timeout, unexpected content type (e.g. an HTML page) or a body
            larger than ``policy.max_bytes``.
    """
    if not policy.allow_network:
        raise UMEInputError(f"URL {url!r} given but network access is disabled (allow_network=False)")
    if urllib.parse.urlsplit(url).scheme not in ("http", "https"):
        raise UMEInputError(f"only http(s) URLs can be fetched, got {url!r}")
    opener = urllib.request.build_opener(_NoRedirects())
    deadline = time.monotonic() + policy.deadline
    current = url
    for _ in range(policy.max_redirects + 1):
        request = urllib.request.Request(current, headers={"User-Agent": "ume-plugins"})
        try:
            with opener.open(request, timeout=policy.timeout) as response:
                return _read_body(response, url, policy, deadline)
        except urllib.error.HTTPError as error:
            error.close()
            if error.code not in _REDIRECT_CODES:
                raise UMEInputError(f"URL {url!r} answered HTTP {error.code}") from None
            location = error.headers.get("Location")
            if not location:
                raise UMEInputError(f"URL {url!r} answered HTTP {error.code} without a Location") from None
            current = urllib.parse.urljoin(current, location)
            if urllib.parse.urlsplit(current).scheme not in ("http", "https"):
                raise UMEInputError(f"URL {url!r} redirected to a non-http(s) location {current!r}") from None
        except UMEInputError:
            raise
        except (urllib.error.URLError, http.client.HTTPException, OSError) as error:
            reason = getattr(error, "reason", None) or error
            raise UMEInputError(f"URL {url!r} could not be fetched: {reason}") from None
    raise UMEInputError(f"URL {url!r} redirected more than {policy.max_redirects} times")


def _read_body(response: http.client.HTTPResponse, url: str, policy: FetchPolicy, deadline: float) -> bytes:
    if response.headers.get("Content-Type") is None:
        raise UMEInputError(f"URL {url!r} answered without a Content-Type; expected an image or video")
    content_type = response.headers.get_content_type()
    if not content_type.startswith(_ACCEPTED_CONTENT_TYPES):
        raise UMEInputError(f"URL {url!r} returned {content_type!r}, not an image or video")
    declared = response.headers.get("Content-Length")
    if declared is not None and declared.isdigit() and int(declared) > policy.max_bytes:
        raise UMEInputError(f"URL {url!r} body of {declared} bytes exceeds the {policy.max_bytes}-byte cap")
    body = bytearray()
    # read1 returns what one socket read gives, so the deadline is checked while bytes trickle in.
    while chunk := response.read1(_CHUNK_BYTES):
        body += chunk
        if len(body) > policy.max_bytes:
            raise UMEInputError(f"URL {url!r} body exceeds the {policy.max_bytes}-byte cap")
        if time.monotonic() > deadline:
            raise UMEInputError(f"URL {url!r} took longer than the {policy.deadline:g} s download deadline")
    if not body:
        raise UMEInputError(f"URL {url!r} returned an empty body")
    return bytes(body)
