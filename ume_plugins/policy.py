"""What the caller allows inputs to do: the runtime security policy.

URL fetching, ``file://`` URLs and the decoding cap protect the machine that runs the model, so
they belong to whoever runs it: they are load-time arguments of :func:`ume_plugins.load` (or
``module.policy = ...``), with safe defaults, and never read from a saved model folder, which
therefore cannot loosen them (see :mod:`ume_plugins.settings`).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from ume_plugins.fetch import FetchPolicy

# ume_plugins.load keyword -> (field of InputPolicy, field of its FetchPolicy or None)
POLICY_OPTIONS: dict[str, tuple[str, str | None]] = {
    "allow_network": ("fetch", "allow_network"),
    "url_timeout": ("fetch", "timeout"),
    "max_url_bytes": ("fetch", "max_bytes"),
    "allow_file_urls": ("allow_file_urls", None),
    "max_decoded_pixels": ("max_decoded_pixels", None),
}


@dataclass(frozen=True)
class InputPolicy:
    """Everything the caller allows inputs to do.

    Attributes:
        fetch: Network permission and limits for http(s) URL inputs.
        allow_file_urls: Accept ``file://`` URLs as paths.
        max_decoded_pixels: Largest image or video frame decoded (decompression-bomb guard).
    """

    fetch: FetchPolicy = FetchPolicy()
    allow_file_urls: bool = False
    max_decoded_pixels: int = 128 * 1024 * 1024

    def __post_init__(self) -> None:
        """Refuse caps that would let nothing or everything through.

        Raises:
            ValueError: A non-positive cap or timeout.
        """
        if self.max_decoded_pixels < 1 or self.fetch.max_bytes < 1 or self.fetch.timeout <= 0:
            raise ValueError("max_decoded_pixels, max_url_bytes and url_timeout must be positive")

    def with_options(self, **options: Any) -> InputPolicy:
        """A copy with :data:`POLICY_OPTIONS` keywords (``allow_network=False``, ``url_timeout=5``, ...) applied.

        Raises:
            ValueError: An unknown option.
        """
        unknown = sorted(set(options) - set(POLICY_OPTIONS))
        if unknown:
            raise ValueError(f"unknown input policy option(s) {unknown}; known: {list(POLICY_OPTIONS)}")
        fetch = {POLICY_OPTIONS[key][1]: value for key, value in options.items() if POLICY_OPTIONS[key][1]}
        own = {POLICY_OPTIONS[key][0]: value for key, value in options.items() if not POLICY_OPTIONS[key][1]}
        return dataclasses.replace(self, fetch=dataclasses.replace(self.fetch, **fetch), **own)

    def as_options(self) -> dict[str, Any]:
        """The policy as :data:`POLICY_OPTIONS` keywords (for job manifests and reports)."""
        return {
            key: getattr(self.fetch, inner) if inner else getattr(self, outer)
            for key, (outer, inner) in POLICY_OPTIONS.items()
        }
