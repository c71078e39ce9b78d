"""Input parsing: any supported raw input becomes an :class:`InputSpec`, checked but not decoded.

:func:`parse` is pure structure checking (types, dict keys, and through :mod:`ume_plugins.sources`
file existence and URL policy), so a whole list is checked before any batch runs;
:func:`ume_plugins.decoding.decode` later decodes the pixels of one spec. Each input is parsed once
and decoded once, and carries its index in the caller's list, which every error and warning about
it names.

Accepted inputs (mixed freely in one batch):

- ``str``: text, unless it is an ``http(s)`` URL, a ``data:`` URI, a ``file://`` URL (when
  allowed) or a path ending in an image/video extension (then a file that must exist);
- ``pathlib.Path``: an image or video file, told apart by extension;
- ``PIL.Image.Image``, ``bytes`` / ``bytearray`` / ``io.BytesIO``: an image;
- ``numpy.ndarray`` / ``torch.Tensor``: an image (2-D or 3-D) or video frames (4-D, T first);
- ``dict`` with keys ``text``, ``image`` (one image or a list = several images) and ``video``
  (a file, URL, list of frames or a 4-D frames array); wrap text in ``{"text": ...}`` to embed a
  string that would otherwise read as a path or URL;
- a user chat message, or a conversation of that one message (see :mod:`ume_plugins.messages`).

Empty or blank text is embedded as an input without text (all such inputs share one vector; a
warning names them). Text must be valid Unicode: strings holding lone surrogates (undecodable
bytes smuggled in with ``errors="surrogateescape"``) are rejected.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ume_plugins.errors import UMEInputError
from ume_plugins.messages import message_as_dict
from ume_plugins.policy import InputPolicy
from ume_plugins.sources import (
    VIDEO_EXTENSIONS,
    Source,
    as_array,
    existing_file,
    image_source,
    is_tensor,
    is_video_source,
    string_source,
    video_source,
)

DICT_KEYS = frozenset({"text", "image", "video"})


@dataclass(frozen=True)
class InputSpec:
    """The structure of one input, checked but not decoded.

    Attributes:
        index: The input's index in the caller's list, named by every error and warning about it.
        text: The input's text, if any.
        images: Image sources, in order.
        video: A video file source, a tuple of frame sources, or None.
    """

    index: int
    text: str | None
    images: tuple[Source, ...]
    video: Source | tuple[Source, ...] | None

    @property
    def size(self) -> int:
        """A rough size (characters plus the sources' sizes) to batch inputs of similar size together."""
        video = () if self.video is None else self.video if isinstance(self.video, tuple) else (self.video,)
        return len(self.text or "") + sum(source.size for source in (*self.images, *video))


def parse(raw: Any, index: int, policy: InputPolicy) -> InputSpec:
    """Check one raw input's structure without decoding it; an :class:`InputSpec` is returned as is.

    Args:
        raw: A raw input (see the module docstring), or a spec parsed earlier (it keeps its index).
        index: The input's index in the caller's list.
        policy: What the caller allows (URLs, ``file://`` URLs).

    Raises:
        UMEInputError: Unsupported type, unknown or empty dict, missing or empty file, forbidden
            URL, text that is not valid Unicode, a malformed chat message, ... (names ``index``).
    """
    if isinstance(raw, InputSpec):
        return raw
    try:
        text, images, video = _parse(raw, policy)
    except UMEInputError as error:
        raise error.at(index) from None
    return InputSpec(index=index, text=text, images=images, video=video)


Parts = tuple[str | None, tuple[Source, ...], Source | tuple[Source, ...] | None]


def _parse(raw: Any, policy: InputPolicy) -> Parts:
    if isinstance(raw, str):
        source = string_source(raw, policy, text_allowed=True)
        if source is None:
            return _checked_text(raw), (), None
        return (None, (), source) if is_video_source(source) else (None, (source,), None)
    if isinstance(raw, Mapping):
        return _parse_dict(message_as_dict(raw) if "role" in raw else raw, policy)
    if isinstance(raw, np.ndarray) or is_tensor(raw):
        if as_array(raw).ndim == 4:
            return None, (), Source("array", as_array(raw))
        return None, (image_source(raw, policy),), None
    if isinstance(raw, os.PathLike):
        path = Path(raw)
        if path.suffix.lower() in VIDEO_EXTENSIONS:
            return None, (), existing_file(path)
        return None, (existing_file(path),), None
    if isinstance(raw, (list, tuple)):
        if raw and all(isinstance(entry, Mapping) and "role" in entry for entry in raw):
            if len(raw) != 1:
                raise UMEInputError(f"a conversation of {len(raw)} messages: give one user message")
            return _parse_dict(message_as_dict(raw[0]), policy)
        raise UMEInputError(
            f"a nested {type(raw).__name__} is not an input; pass several images as "
            "{'image': [...]} and video frames as {'video': [...]}"
        )
    return None, (image_source(raw, policy),), None


def _parse_dict(raw: Mapping, policy: InputPolicy) -> Parts:
    if not all(isinstance(key, str) for key in raw):
        raise UMEInputError(f"dict keys must be strings, got {sorted(map(repr, raw))}")
    unknown = sorted(set(raw) - DICT_KEYS)
    if unknown:
        raise UMEInputError(f"unknown dict key(s) {unknown}; accepted keys are {sorted(DICT_KEYS)}")
    text = raw.get("text")
    if text is not None and not isinstance(text, str):
        raise UMEInputError(f"'text' must be a string, got {type(text).__name__}")
    if text is not None:
        _checked_text(text)
    images_raw = raw.get("image")
    if images_raw is None:
        images: tuple[Source, ...] = ()
    elif isinstance(images_raw, (list, tuple)):
        if not images_raw:
            raise UMEInputError("'image' is an empty list")
        images = tuple(image_source(image, policy) for image in images_raw)
    else:
        images = (image_source(images_raw, policy),)
    video = video_source(raw["video"], policy) if raw.get("video") is not None else None
    if text is None and not images and video is None:
        raise UMEInputError("dict has no content: give at least one of 'text', 'image', 'video'")
    return text, images, video


def _checked_text(text: str) -> str:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as error:
        raise UMEInputError(
            f"text is not valid Unicode (lone surrogate at position {error.start}); "
            "decode its bytes with errors='replace'"
        ) from None
    return text
