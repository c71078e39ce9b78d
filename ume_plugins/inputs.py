"""Input parsing: any supported raw input becomes a validated :class:`Item`.

Two stages, so that a batch fails fast: :func:`describe` checks the structure of an input without
decoding anything (types, dict keys, file existence, URL policy) and :func:`load` decodes the pixels.

Accepted inputs (mixed freely in one batch):

- ``str``: text, unless it is an ``http(s)`` URL, a ``data:`` URI, a ``file://`` URL (when
  allowed) or a path ending in an image/video extension (then a file that must exist);
- ``pathlib.Path``: an image or video file, told apart by extension;
- ``PIL.Image.Image``, ``bytes`` / ``bytearray`` / ``io.BytesIO``: an image;
- ``numpy.ndarray`` / ``torch.Tensor``: an image (2-D or 3-D) or video frames (4-D, T first);
- ``dict`` with keys ``text``, ``image`` (one image or a list = several images) and ``video``
  (a file, URL, list of frames or a 4-D frames array); wrap text in ``{"text": ...}`` to embed a
  string that would otherwise read as a path or URL;
- :class:`Item`: an input already decoded by :func:`read`, used as is.

Empty or blank text is embedded as an input without text (all such inputs share one vector; a
warning names them). Text must be valid Unicode: strings holding lone surrogates (undecodable
bytes smuggled in with ``errors="surrogateescape"``) are rejected.
"""

from __future__ import annotations

import base64
import binascii
import io
import os
import re
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
from PIL import Image

from ume_plugins.errors import UMEInputError
from ume_plugins.fetch import FetchPolicy, fetch_url
from ume_plugins.media import (
    PixelPolicy,
    array_to_image,
    decode_image,
    decode_video,
    fit_image,
    pad_frames,
    sample_frame_indices,
)

IMAGE_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff"})
VIDEO_EXTENSIONS = frozenset({".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpeg", ".mpg"})
DICT_KEYS = frozenset({"text", "image", "video"})
URL_SCHEME = re.compile(r"^(?P<scheme>[a-zA-Z][a-zA-Z0-9+.-]*)://")
_DATA_URI = re.compile(r"^data:(?P<mime>[\w.+-]+/[\w.+-]+)?(?P<params>(;[^,;]*)*),(?P<payload>.*)$", re.DOTALL)
_MAX_PATH_CHARS = 4096
_CHAT_MESSAGES = "chat messages are not accepted; pass {'text': ..., 'image': ..., 'video': ...}"

# id(raw input) -> its index in the list the caller passed, while that list is being encoded.
_ORIGINS: ContextVar[dict[int, int] | None] = ContextVar("ume_input_origins", default=None)

SourceKind = Literal["pil", "path", "url", "data_uri", "bytes", "array"]


@dataclass(frozen=True)
class Source:
    """Where one image, one frame or one video file comes from."""

    kind: SourceKind
    value: Any


@dataclass(frozen=True)
class InputSpec:
    """The structure of one input, checked but not decoded.

    Attributes:
        text: The input's text, if any.
        images: Image sources, in order.
        video: A video file source, a tuple of frame sources, or None.
    """

    text: str | None
    images: tuple[Source, ...]
    video: Source | tuple[Source, ...] | None


@dataclass(frozen=True)
class Item:
    """One decoded input, ready for prompt building.

    Attributes:
        text: The input's text, if any.
        images: RGB images after the first resize, in order.
        video: RGB frames after sampling and the first resize, or None.
    """

    text: str | None
    images: tuple[Image.Image, ...]
    video: tuple[Image.Image, ...] | None

    @property
    def is_text_only(self) -> bool:
        """True when the input has no image and no video."""
        return not self.images and self.video is None


@dataclass(frozen=True)
class InputPolicy:
    """Everything that decides how raw inputs are read.

    Attributes:
        pixels: Resize bounds, frame sampling and decoding caps.
        fetch: Network permissions and limits for URL inputs.
        allow_file_urls: Accept ``file://`` URLs as paths.
    """

    pixels: PixelPolicy = PixelPolicy()
    fetch: FetchPolicy = FetchPolicy()
    allow_file_urls: bool = False


@contextmanager
def located(inputs: Sequence[Any], policy: InputPolicy, indices: Sequence[int] | None = None) -> Iterator[None]:
    """Check every input's structure up front, and name caller indices in errors while encoding.

    Batching reorders inputs (by length), so inside this block the index of an input in
    ``inputs`` is found by identity. Blocks nest: an input already located by an enclosing block
    keeps the index that block gave it, so errors name the outermost caller's index.

    Args:
        inputs: The caller's inputs.
        policy: How inputs are read.
        indices: The caller's index of each input; defaults to its position in ``inputs``.

    Raises:
        UMEInputError: The first input whose structure is wrong, with its index.
    """
    enclosing = _ORIGINS.get() or {}
    origins: dict[int, int] = {}
    for position, raw in enumerate(inputs):
        index = enclosing.get(id(raw), position if indices is None else indices[position])
        try:
            describe(raw, policy)
        except UMEInputError as error:
            raise error.at(index) from None
        origins.setdefault(id(raw), index)
    token = _ORIGINS.set(origins)
    try:
        yield
    finally:
        _ORIGINS.reset(token)


def origin_of(raw: Any, fallback: int) -> int:
    """The caller's index of ``raw`` inside :func:`located`, else ``fallback``."""
    origins = _ORIGINS.get()
    return origins.get(id(raw), fallback) if origins else fallback


def read(raw: Any, policy: InputPolicy) -> Item:
    """Describe and decode one raw input; an :class:`Item` is returned as is.

    Raises:
        UMEInputError: The input's structure is wrong or its media cannot be decoded.
    """
    if isinstance(raw, Item):
        return raw
    return load(describe(raw, policy), policy)


def describe(raw: Any, policy: InputPolicy) -> InputSpec:
    """Check one raw input's structure without decoding it.

    Raises:
        UMEInputError: Unsupported type, unknown or empty dict, missing or empty file, forbidden
            URL, text that is not valid Unicode, ...
    """
    if isinstance(raw, Item):
        return InputSpec(
            text=raw.text,
            images=tuple(Source("pil", image) for image in raw.images),
            video=None if raw.video is None else tuple(Source("pil", frame) for frame in raw.video),
        )
    if isinstance(raw, str):
        return _describe_string(raw, policy)
    if isinstance(raw, Mapping):
        return _describe_dict(raw, policy)
    if isinstance(raw, (np.ndarray,)) or _is_tensor(raw):
        array = _as_array(raw)
        if array.ndim == 4:
            return InputSpec(text=None, images=(), video=Source("array", array))
        return InputSpec(text=None, images=(_image_source(raw, policy),), video=None)
    if isinstance(raw, os.PathLike):
        path = Path(raw)
        if path.suffix.lower() in VIDEO_EXTENSIONS:
            return InputSpec(text=None, images=(), video=_existing_file(path))
        return InputSpec(text=None, images=(_existing_file(path),), video=None)
    if isinstance(raw, (list, tuple)):
        if raw and all(isinstance(entry, Mapping) and "role" in entry for entry in raw):
            raise UMEInputError(_CHAT_MESSAGES)
        raise UMEInputError(
            f"a nested {type(raw).__name__} is not an input; pass several images as "
            "{'image': [...]} and video frames as {'video': [...]}"
        )
    return InputSpec(text=None, images=(_image_source(raw, policy),), video=None)


def load(spec: InputSpec, policy: InputPolicy) -> Item:
    """Decode the pixels of a described input.

    Raises:
        UMEInputError: Unreadable or corrupt media, empty video, frames of unequal size, ...
    """
    images = tuple(fit_image(_open_image(source, policy), policy.pixels) for source in spec.images)
    video = None if spec.video is None else tuple(_load_frames(spec.video, policy))
    return Item(text=spec.text, images=images, video=video)


def _describe_string(raw: str, policy: InputPolicy) -> InputSpec:
    source = _media_string(raw, policy, text_allowed=True)
    if source is None:
        return InputSpec(text=_checked_text(raw), images=(), video=None)
    if _is_video_source(source):
        return InputSpec(text=None, images=(), video=source)
    return InputSpec(text=None, images=(source,), video=None)


def _describe_dict(raw: Mapping, policy: InputPolicy) -> InputSpec:
    if not all(isinstance(key, str) for key in raw):
        raise UMEInputError(f"dict keys must be strings, got {sorted(map(repr, raw))}")
    unknown = sorted(set(raw) - DICT_KEYS)
    if unknown:
        if {"role", "content"} & set(raw):
            raise UMEInputError(_CHAT_MESSAGES)
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
    return InputSpec(text=text, images=images, video=video)


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
    if isinstance(raw, os.PathLike):
        return _existing_file(Path(raw))
    if isinstance(raw, (bytes, bytearray, memoryview)):
        if not len(raw):
            raise UMEInputError("image bytes are empty")
        return Source("bytes", bytes(raw))
    if isinstance(raw, io.IOBase) or (hasattr(raw, "read") and callable(raw.read)):
        return Source("bytes", _read_stream(raw))
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
    if isinstance(raw, os.PathLike):
        return _existing_file(Path(raw))
    if isinstance(raw, (bytes, bytearray, memoryview)):
        if not len(raw):
            raise UMEInputError("video bytes are empty")
        return Source("bytes", bytes(raw))
    raise UMEInputError(f"unsupported video type {type(raw).__name__}")


def _read_stream(stream: Any) -> bytes:
    """The rest of a file-like object; seekable streams are rewound, since inputs are read twice."""
    seekable = getattr(stream, "seekable", None)
    start = stream.tell() if callable(seekable) and seekable() else None
    data = stream.read()
    if start is not None:
        stream.seek(start)
    if not data:
        raise UMEInputError("image stream is empty")
    return bytes(data)


def _is_video_source(source: Source) -> bool:
    if source.kind == "path":
        return source.value.suffix.lower() in VIDEO_EXTENSIONS
    if source.kind == "url":
        return Path(source.value.split("?", 1)[0]).suffix.lower() in VIDEO_EXTENSIONS
    if source.kind == "data_uri":
        return source.value.startswith("data:video/")
    return False


def _open_image(source: Source, policy: InputPolicy) -> Image.Image:
    if source.kind == "pil":
        if source.value.width == 0 or source.value.height == 0:
            raise UMEInputError(f"image has an empty side ({source.value.width}x{source.value.height})")
        return source.value
    if source.kind == "array":
        return array_to_image(source.value)
    return decode_image(_read_bytes(source, policy), policy.pixels)


def _read_bytes(source: Source, policy: InputPolicy) -> bytes:
    if source.kind == "bytes":
        return source.value
    if source.kind == "url":
        return fetch_url(source.value, policy.fetch)
    if source.kind == "data_uri":
        return _decode_data_uri(source.value)
    try:
        data = source.value.read_bytes()
    except OSError as error:
        raise UMEInputError(f"cannot read {str(source.value)!r}: {error.strerror or error}") from None
    if not data:
        raise UMEInputError(f"file is empty: {str(source.value)!r}")
    return data


def _decode_data_uri(uri: str) -> bytes:
    match = _DATA_URI.match(uri)
    if match is None:
        raise UMEInputError(f"malformed data: URI {_short(uri)}")
    if ";base64" not in match["params"]:
        raise UMEInputError("data: URIs must be base64-encoded")
    try:
        data = base64.b64decode(match["payload"], validate=True)
    except (binascii.Error, ValueError):
        raise UMEInputError("data: URI holds invalid base64") from None
    if not data:
        raise UMEInputError("data: URI is empty")
    return data


def _load_frames(source: Source | tuple[Source, ...], policy: InputPolicy) -> list[Image.Image]:
    pixels = policy.pixels
    if isinstance(source, tuple):
        frames = [_open_image(source[i], policy) for i in sample_frame_indices(len(source), pixels.num_frames)]
    elif source.kind == "array":
        frames = [array_to_image(source.value[i]) for i in sample_frame_indices(len(source.value), pixels.num_frames)]
    else:
        frames = decode_video(source.value if source.kind == "path" else _read_bytes(source, policy), pixels)
    fitted = [fit_image(frame, pixels) for frame in frames]
    sizes = {frame.size for frame in fitted}
    if len(sizes) > 1:
        raise UMEInputError(f"video frames differ in size after resizing: {sorted(sizes)}")
    return pad_frames(fitted)


def _is_tensor(raw: Any) -> bool:
    return type(raw).__module__.startswith("torch") and hasattr(raw, "detach")


def _as_array(raw: Any) -> np.ndarray:
    if isinstance(raw, np.ndarray):
        return raw
    return raw.detach().cpu().numpy()


def _short(text: str, limit: int = 80) -> str:
    return repr(text if len(text) <= limit else text[:limit] + "...")
