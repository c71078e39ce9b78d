"""Decoding: a parsed :class:`~ume_plugins.inputs.InputSpec` becomes an :class:`Item` of RGB pixels.

The only step that reads media: files, ``data:`` URIs, bytes and (through :mod:`ume_plugins.fetch`)
URLs. Images and frames get the official eval's first resize here; frames are sampled uniformly.
"""

from __future__ import annotations

import base64
import binascii
import re
from dataclasses import dataclass

from PIL import Image

from ume_plugins.errors import UMEInputError
from ume_plugins.fetch import fetch_url
from ume_plugins.inputs import InputSpec
from ume_plugins.media import array_to_image, decode_image, decode_video, fit_image, pad_frames, sample_frame_indices
from ume_plugins.policy import InputPolicy
from ume_plugins.settings import EmbeddingSettings
from ume_plugins.sources import Source

_DATA_URI = re.compile(r"^data:(?P<mime>[\w.+-]+/[\w.+-]+)?(?P<params>(;[^,;]*)*),(?P<payload>.*)$", re.DOTALL)


@dataclass(frozen=True)
class Item:
    """One decoded input, ready for prompt building.

    Attributes:
        index: The input's index in the caller's list.
        text: The input's text, if any.
        images: RGB images after the first resize, in order.
        video: RGB frames after sampling and the first resize, or None.
    """

    index: int
    text: str | None
    images: tuple[Image.Image, ...]
    video: tuple[Image.Image, ...] | None

    @property
    def is_text_only(self) -> bool:
        """True when the input has no image and no video."""
        return not self.images and self.video is None


def decode(spec: InputSpec, policy: InputPolicy, settings: EmbeddingSettings) -> Item:
    """Decode the pixels of a parsed input.

    Args:
        spec: The parsed input.
        policy: What the caller allows (URL limits, the decoding cap).
        settings: The pixel bounds of the first resize and the frames sampled per video.

    Raises:
        UMEInputError: Unreadable or corrupt media, empty video, frames of unequal size, ...
            (names the input's index).
    """
    try:
        images = tuple(_fitted(_open_image(source, policy), settings) for source in spec.images)
        video = None if spec.video is None else tuple(_load_frames(spec.video, policy, settings))
    except UMEInputError as error:
        raise error.at(spec.index) from None
    return Item(index=spec.index, text=spec.text, images=images, video=video)


def _fitted(image: Image.Image, settings: EmbeddingSettings) -> Image.Image:
    return fit_image(image, settings.min_pixels, settings.max_pixels)


def _open_image(source: Source, policy: InputPolicy) -> Image.Image:
    if source.kind == "pil":
        if source.value.width == 0 or source.value.height == 0:
            raise UMEInputError(f"image has an empty side ({source.value.width}x{source.value.height})")
        return source.value
    if source.kind == "array":
        return array_to_image(source.value)
    return decode_image(_read_bytes(source, policy), policy.max_decoded_pixels)


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
        raise UMEInputError(f"malformed data: URI {uri[:80]!r}")
    if ";base64" not in match["params"]:
        raise UMEInputError("data: URIs must be base64-encoded")
    try:
        data = base64.b64decode(match["payload"], validate=True)
    except (binascii.Error, ValueError):
        raise UMEInputError("data: URI holds invalid base64") from None
    if not data:
        raise UMEInputError("data: URI is empty")
    return data


def _load_frames(
    source: Source | tuple[Source, ...], policy: InputPolicy, settings: EmbeddingSettings
) -> list[Image.Image]:
    wanted = settings.num_frames
    if isinstance(source, tuple):
        frames = [_open_image(source[i], policy) for i in sample_frame_indices(len(source), wanted)]
    elif source.kind == "array":
        frames = [array_to_image(source.value[i]) for i in sample_frame_indices(len(source.value), wanted)]
    else:
        encoded = source.value if source.kind == "path" else _read_bytes(source, policy)
        frames = decode_video(encoded, wanted, policy.max_decoded_pixels)
    fitted = [_fitted(frame, settings) for frame in frames]
    sizes = {frame.size for frame in fitted}
    if len(sizes) > 1:
        raise UMEInputError(f"video frames differ in size after resizing: {sorted(sizes)}")
    return pad_frames(fitted)
