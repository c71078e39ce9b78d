"""Input parsing: any supported raw input becomes an :class:`InputSpec`, checked but not decoded.

:func:`parse` is pure structure checking (types, dict keys, file existence, URL policy), so a
whole list is checked before any batch runs; :func:`ume_plugins.decoding.decode` later decodes the
pixels of one spec. Each input is parsed once and decoded once, and carries its index in the
caller's list, which every error and warning about it names.

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

import io
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
from PIL import Image

from ume_plugins.errors import UMEInputError
from ume_plugins.messages import message_as_dict
from ume_plugins.policy import InputPolicy

IMAGE_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff"})
VIDEO_EXTENSIONS = frozenset({".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpeg", ".mpg"})
DICT_KEYS = frozenset({"text", "image", "video"})
URL_SCHEME = re.compile(r"^(?P<scheme>[a-zA-Z][a-zA-Z0-9+.-]*)://")
_MAX_PATH_CHARS = 4096

SourceKind = Literal["pil", "path", "url", "data_uri", "bytes", "array"]


@dataclass(frozen=True)
class Source:
    """Where one image, one frame or one video file comes from."""

    kind: SourceKind
    value: Any

    @property
    def size(self) -> int:
        """A rough size for batching: pixels of in-memory images, bytes of encoded ones, 0 for URLs."""
        if self.kind == "pil":
            return self.value.width * self.value.height
        if self.kind == "array":
            return int(self.value.size)
        if self.kind == "path":
            return self.value.stat().st_size
        return 0 if self.kind == "url" else len(self.value)


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
        source = _media_string(raw, policy, text_allowed=True)
        if source is None:
            return _checked_text(raw), (), None
        return (None, (), source) if _is_video_source(source) else (None, (source,), None)
    if isinstance(raw, Mapping):
        return _parse_dict(message_as_dict(raw) if "role" in raw else raw, policy)
    if isinstance(raw, np.ndarray) or _is_tensor(raw):
        if _as_array(raw).ndim == 4:
            return None, (), Source("array", _as_array(raw))
        return None, (_image_source(raw, policy),), None
    if isinstance(raw, os.PathLike):
        path = Path(raw)
        if path.suffix.lower() in VIDEO_EXTENSIONS:
            return None, (), _existing_file(path)
        return None, (_existing_file(path),), None
    if isinstance(raw, (list, tuple)):
        if raw and all(isinstance(entry, Mapping) and "role" in entry for entry in raw):
            if len(raw) != 1:
                raise UMEInputError(f"a conversation of {len(raw)} messages: give one user message")
            return _parse_dict(message_as_dict(raw[0]), policy)
        raise UMEInputError(
            f"a nested {type(raw).__name__} is not an input; pass several images as "
            "{'image': [...]} and video frames as {'video': [...]}"
        )
    return None, (_image_source(raw, policy),), None


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
        images = tuple(_image_source(image, policy) for image in images_raw)
    else:
        images = (_image_source(images_raw, policy),)
    video = _video_source(raw["video"], policy) if raw.get("video") is not None else None
    if text is None and not images and video is None:
        raise UMEInputError("dict has no content: give at least one of 'text', 'image', 'video'")
    return text, images, video


def _media_string(raw: str, policy: InputPolicy, text_allowed: bool) -> Source | None:
    """The media source a string names, or None when it is text."""
    if raw.startswith("data:"):
        return Source("data_uri", raw)
    if raw.startswith(("http://", "https://")) and not any(ch.isspace() for ch in raw):
        if not policy.fetch.allow_network:
            raise UMEInputError(f"URL {raw!r} given but network access is disabled (allow_network=False)")
        return Source("url", raw)
    if raw.startswith("file://"):
        if not policy.allow_file_urls:
            raise UMEInputError(f"file:// URLs are disabled (allow_file_urls=False): {raw!r}")
        return _existing_file(Path(raw[len("file://") :]))
    looks_like_media = (
        len(raw) < _MAX_PATH_CHARS
        and "\n" not in raw
        and Path(raw).suffix.lower() in IMAGE_EXTENSIONS | VIDEO_EXTENSIONS
    )
    scheme = URL_SCHEME.match(raw)
    if scheme and (looks_like_media or not text_allowed) and not any(ch.isspace() for ch in raw):
        raise UMEInputError(f"unsupported URL scheme {scheme['scheme']!r} in {_short(raw)}; only http(s) is fetched")
    if looks_like_media and (os.path.lexists(raw) or not any(ch.isspace() for ch in raw)):
        return _existing_file(Path(raw))
    if text_allowed:
        return None
    if len(raw) < _MAX_PATH_CHARS and os.path.lexists(raw):
        return _existing_file(Path(raw))
    raise UMEInputError(f"{_short(raw)} is neither an existing file, an http(s) URL nor a data: URI")


def _existing_file(path: Path) -> Source:
    if not path.exists():
        raise UMEInputError(f"file not found: {str(path)!r}")
    if not path.is_file():
        raise UMEInputError(f"not a regular file: {str(path)!r}")
    if path.stat().st_size == 0:
        raise UMEInputError(f"file is empty: {str(path)!r}")
    return Source("path", path)


def _checked_text(text: str) -> str:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as error:
        raise UMEInputError(
            f"text is not valid Unicode (lone surrogate at position {error.start}); "
            "decode its bytes with errors='replace'"
        ) from None
    return text


def _image_source(raw: Any, policy: InputPolicy) -> Source:
    if isinstance(raw, Image.Image):
        return Source("pil", raw)
    if isinstance(raw, str):
        source = _media_string(raw, policy, text_allowed=False)
        assert source is not None
        if _is_video_source(source):
            raise UMEInputError(f"{_short(raw)} is a video where an image was expected; use the 'video' key")
        return source
    if isinstance(raw, (io.IOBase, os.PathLike, bytes, bytearray, memoryview)) or hasattr(raw, "read"):
        return _encoded_source(raw, "image")
    if isinstance(raw, np.ndarray) or _is_tensor(raw):
        array = _as_array(raw)
        if array.ndim not in (2, 3):
            raise UMEInputError(f"image array must have 2 or 3 dimensions, got shape {array.shape}")
        return Source("array", array)
    if raw is None:
        raise UMEInputError("got None, not an input")
    raise UMEInputError(f"unsupported input type {type(raw).__name__}")


def _video_source(raw: Any, policy: InputPolicy) -> Source | tuple[Source, ...]:
    if isinstance(raw, (list, tuple)):
        if not raw:
            raise UMEInputError("video has no frames (empty frame list)")
        return tuple(_image_source(frame, policy) for frame in raw)
    if isinstance(raw, np.ndarray) or _is_tensor(raw):
        array = _as_array(raw)
        if array.ndim != 4:
            raise UMEInputError(f"video frames array must be 4-D (frames first), got shape {array.shape}")
        if array.shape[0] == 0:
            raise UMEInputError("video has no frames (empty frames array)")
        return Source("array", array)
    if isinstance(raw, str):
        source = _media_string(raw, policy, text_allowed=False)
        assert source is not None
        return source
    if isinstance(raw, (os.PathLike, bytes, bytearray, memoryview)):
        return _encoded_source(raw, "video")
    raise UMEInputError(f"unsupported video type {type(raw).__name__}")


def _encoded_source(raw: Any, what: str) -> Source:
    """A file, bytes or a stream holding an encoded image or video."""
    if isinstance(raw, os.PathLike):
        return _existing_file(Path(raw))
    if isinstance(raw, (bytes, bytearray, memoryview)):
        if not len(raw):
            raise UMEInputError(f"{what} bytes are empty")
        return Source("bytes", bytes(raw))
    data = _read_stream(raw)
    if not data:
        raise UMEInputError(f"{what} stream is empty")
    return Source("bytes", data)


def _read_stream(stream: Any) -> bytes:
    """The rest of a file-like object; a seekable stream is rewound, so the caller's position is kept."""
    seekable = getattr(stream, "seekable", None)
    start = stream.tell() if callable(seekable) and seekable() else None
    data = stream.read()
    if start is not None:
        stream.seek(start)
    return bytes(data or b"")


def _is_video_source(source: Source) -> bool:
    if source.kind == "path":
        return source.value.suffix.lower() in VIDEO_EXTENSIONS
    if source.kind == "url":
        return Path(source.value.split("?", 1)[0]).suffix.lower() in VIDEO_EXTENSIONS
    if source.kind == "data_uri":
        return source.value.startswith("data:video/")
    return False


def _is_tensor(raw: Any) -> bool:
    return type(raw).__module__.startswith("torch") and hasattr(raw, "detach")


def _as_array(raw: Any) -> np.ndarray:
    if isinstance(raw, np.ndarray):
        return raw
    return raw.detach().cpu().numpy()


def _short(text: str, limit: int = 80) -> str:
    return repr(text if len(text) <= limit else text[:limit] + "...")
