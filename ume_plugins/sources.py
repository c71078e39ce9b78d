"""Media sources: where one image, frame or video file comes from, checked but not read.

The kinds of raw value that name media (``PIL`` images, paths, ``http(s)`` and ``file://`` URLs,
``data:`` URIs, bytes and streams, arrays and tensors) and the checks each passes before any
decoding: the file exists and is not empty, the URL is allowed by the caller's policy, the array
has the right number of dimensions. :mod:`ume_plugins.inputs` assembles them into one input;
:mod:`ume_plugins.decoding` reads them.
"""

from __future__ import annotations

import io
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
from PIL import Image

from ume_plugins.errors import UMEInputError
from ume_plugins.policy import InputPolicy

IMAGE_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff"})
VIDEO_EXTENSIONS = frozenset({".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpeg", ".mpg"})
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


def string_source(raw: str, policy: InputPolicy, text_allowed: bool) -> Source | None:
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
        return existing_file(Path(raw[len("file://") :]))
    looks_like_media = (
        len(raw) < _MAX_PATH_CHARS
        and "\n" not in raw
        and Path(raw).suffix.lower() in IMAGE_EXTENSIONS | VIDEO_EXTENSIONS
    )
    scheme = URL_SCHEME.match(raw)
    if scheme and (looks_like_media or not text_allowed) and not any(ch.isspace() for ch in raw):
        raise UMEInputError(f"unsupported URL scheme {scheme['scheme']!r} in {_short(raw)}; only http(s) is fetched")
    if looks_like_media and (os.path.lexists(raw) or not any(ch.isspace() for ch in raw)):
        return existing_file(Path(raw))
    if text_allowed:
        return None
    if len(raw) < _MAX_PATH_CHARS and os.path.lexists(raw):
        return existing_file(Path(raw))
    raise UMEInputError(f"{_short(raw)} is neither an existing file, an http(s) URL nor a data: URI")


def existing_file(path: Path) -> Source:
    """A source for a regular, non-empty file that exists."""
    if not path.exists():
        raise UMEInputError(f"file not found: {str(path)!r}")
    if not path.is_file():
        raise UMEInputError(f"not a regular file: {str(path)!r}")
    if path.stat().st_size == 0:
        raise UMEInputError(f"file is empty: {str(path)!r}")
    return Source("path", path)


def image_source(raw: Any, policy: InputPolicy) -> Source:
    """The source of one image (or video frame): an image object, a string, encoded bytes or an array."""
    if isinstance(raw, Image.Image):
        return Source("pil", raw)
    if isinstance(raw, str):
        source = string_source(raw, policy, text_allowed=False)
        assert source is not None
        if is_video_source(source):
            raise UMEInputError(f"{_short(raw)} is a video where an image was expected; use the 'video' key")
        return source
    if isinstance(raw, (io.IOBase, os.PathLike, bytes, bytearray, memoryview)) or hasattr(raw, "read"):
        return _encoded_source(raw, "image")
    if isinstance(raw, np.ndarray) or is_tensor(raw):
        array = as_array(raw)
        if array.ndim not in (2, 3):
            raise UMEInputError(f"image array must have 2 or 3 dimensions, got shape {array.shape}")
        return Source("array", array)
    if raw is None:
        raise UMEInputError("got None, not an input")
    raise UMEInputError(f"unsupported input type {type(raw).__name__}")


def video_source(raw: Any, policy: InputPolicy) -> Source | tuple[Source, ...]:
    """The source of one video: a file, URL or bytes, a list of frames, or a 4-D frames array."""
    if isinstance(raw, (list, tuple)):
        if not raw:
            raise UMEInputError("video has no frames (empty frame list)")
        return tuple(image_source(frame, policy) for frame in raw)
    if isinstance(raw, np.ndarray) or is_tensor(raw):
        array = as_array(raw)
        if array.ndim != 4:
            raise UMEInputError(f"video frames array must be 4-D (frames first), got shape {array.shape}")
        if array.shape[0] == 0:
            raise UMEInputError("video has no frames (empty frames array)")
        return Source("array", array)
    if isinstance(raw, str):
        source = string_source(raw, policy, text_allowed=False)
        assert source is not None
        return source
    if isinstance(raw, (os.PathLike, bytes, bytearray, memoryview)):
        return _encoded_source(raw, "video")
    raise UMEInputError(f"unsupported video type {type(raw).__name__}")


def _encoded_source(raw: Any, what: str) -> Source:
    """A file, bytes or a stream holding an encoded image or video."""
    if isinstance(raw, os.PathLike):
        return existing_file(Path(raw))
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


def is_video_source(source: Source) -> bool:
    """True for a file, URL or ``data:`` URI that names a video."""
    if source.kind == "path":
        return source.value.suffix.lower() in VIDEO_EXTENSIONS
    if source.kind == "url":
        return Path(source.value.split("?", 1)[0]).suffix.lower() in VIDEO_EXTENSIONS
    if source.kind == "data_uri":
        return source.value.startswith("data:video/")
    return False


def is_tensor(raw: Any) -> bool:
    """True for a torch tensor (checked without importing torch)."""
    return type(raw).__module__.startswith("torch") and hasattr(raw, "detach")


def as_array(raw: Any) -> np.ndarray:
    """A numpy array or tensor as a numpy array."""
    if isinstance(raw, np.ndarray):
        return raw
    return raw.detach().cpu().numpy()


def _short(text: str, limit: int = 80) -> str:
    return repr(text if len(text) <= limit else text[:limit] + "...")
