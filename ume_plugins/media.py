"""Pixels: decoding images and videos, and the official eval's first resize.

The official eval resizes every image (and video frame) twice: qwen-vl-utils' ``fetch_image``
(multiples of 28 inside [3136, 12,845,056] pixels, bicubic) and then the Qwen2-VL processor with
its own bounds. This module does the first step; the processor does the second.
"""

from __future__ import annotations

import io
import math
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from ume_plugins.errors import UMEInputError

PATCH_FACTOR = 28  # 14-pixel patches merged 2 x 2
MAX_ASPECT_RATIO = 200
FRAME_FACTOR = 2  # Qwen2-VL merges 2 frames per temporal patch
BLANK_IMAGE_SIDE = 28


def smart_resize(height: int, width: int, min_pixels: int, max_pixels: int) -> tuple[int, int]:
    """Target size: both sides multiples of 28, area within bounds, aspect ratio kept.

    Raises:
        UMEInputError: The aspect ratio exceeds 200 or a side is empty.
    """
    if height <= 0 or width <= 0:
        raise UMEInputError(f"image has an empty side ({width}x{height})")
    if max(height, width) / min(height, width) > MAX_ASPECT_RATIO:
        raise UMEInputError(
            f"image aspect ratio {max(height, width) / min(height, width):.0f} exceeds {MAX_ASPECT_RATIO} "
            f"({width}x{height})"
        )
    h_bar = max(PATCH_FACTOR, round(height / PATCH_FACTOR) * PATCH_FACTOR)
    w_bar = max(PATCH_FACTOR, round(width / PATCH_FACTOR) * PATCH_FACTOR)
    if h_bar * w_bar > max_pixels:
        beta = math.sqrt(height * width / max_pixels)
        h_bar = math.floor(height / beta / PATCH_FACTOR) * PATCH_FACTOR
        w_bar = math.floor(width / beta / PATCH_FACTOR) * PATCH_FACTOR
    elif h_bar * w_bar < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h_bar = math.ceil(height * beta / PATCH_FACTOR) * PATCH_FACTOR
        w_bar = math.ceil(width * beta / PATCH_FACTOR) * PATCH_FACTOR
    return h_bar, w_bar


def to_rgb(image: Image.Image) -> Image.Image:
    """RGB pixels; transparent images are composited over white, 16/32-bit ones rescaled."""
    if image.mode == "RGB":
        return image
    if image.mode in ("I;16", "I;16B", "I;16L", "I;16N"):
        image = Image.fromarray((np.asarray(image, dtype=np.uint32) >> 8).astype(np.uint8), mode="L")
    elif image.mode in ("I", "F"):
        values = np.asarray(image, dtype=np.float64)
        span = float(values.max() - values.min()) or 1.0
        image = Image.fromarray(((values - values.min()) / span * 255).round().astype(np.uint8), mode="L")
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGB", rgba.size, (255, 255, 255))
        background.paste(rgba, mask=rgba.getchannel("A"))
        return background
    return image.convert("RGB")


def fit_image(image: Image.Image, min_pixels: int, max_pixels: int) -> Image.Image:
    """The first of the eval's two resizes: RGB, then bicubic to the smart-resize target."""
    image = to_rgb(image)
    height, width = smart_resize(image.height, image.width, min_pixels, max_pixels)
    if (width, height) == image.size:
        return image
    return image.resize((width, height), Image.Resampling.BICUBIC)


def blank_image(min_pixels: int, max_pixels: int) -> Image.Image:
    """The white 28x28 image the eval gives text-only inputs (56x56 after fitting)."""
    return fit_image(Image.new("RGB", (BLANK_IMAGE_SIDE, BLANK_IMAGE_SIDE), (255, 255, 255)), min_pixels, max_pixels)


def decode_image(data: bytes | io.BytesIO | Path, max_decoded_pixels: int) -> Image.Image:
    """Decode an encoded image fully, upright (EXIF orientation applied), first frame only.

    Raises:
        UMEInputError: Unreadable, truncated or corrupt data, or a declared size above
            ``max_decoded_pixels`` (checked before any pixel is decoded).
    """
    source = io.BytesIO(data) if isinstance(data, bytes) else data
    try:
        with warnings.catch_warnings():
            # Our cap (below PIL's hard limit) decides; PIL's softer warning would only be noise.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(source)
            _check_decoded_size(image.width, image.height, max_decoded_pixels)
            image.load()
            return ImageOps.exif_transpose(image)
    except UMEInputError:
        raise
    except Image.UnidentifiedImageError:
        raise UMEInputError("cannot decode image: not a recognised image format") from None
    except Image.DecompressionBombError as error:
        # PIL's own hard limit, which it checks while opening, before our cap can.
        raise UMEInputError(f"image too large to decode (possible decompression bomb): {error}") from None
    except (OSError, SyntaxError, ValueError) as error:
        raise UMEInputError(f"cannot decode image: {error}") from None


def _check_decoded_size(width: int, height: int, max_decoded_pixels: int) -> None:
    if width * height > max_decoded_pixels:
        raise UMEInputError(
            f"image declares {width}x{height} pixels, above the {max_decoded_pixels}-pixel "
            "decoding cap (possible decompression bomb)"
        )


def array_to_image(array: np.ndarray) -> Image.Image:
    """An image from an HxW, HxWxC or CxHxW array (uint8, or floats in [0, 1]).

    Raises:
        UMEInputError: Wrong shape, non-finite values or an unsupported dtype.
    """
    if array.ndim == 3 and array.shape[0] in (1, 3, 4) and array.shape[-1] not in (1, 3, 4):
        array = np.moveaxis(array, 0, -1)
    if array.ndim == 3 and array.shape[-1] == 1:
        array = array[..., 0]
    if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[-1] not in (3, 4)):
        raise UMEInputError(f"image array must be HxW, HxWxC or CxHxW with 1, 3 or 4 channels, got {array.shape}")
    if array.size == 0:
        raise UMEInputError(f"image array is empty {array.shape}")
    if np.issubdtype(array.dtype, np.floating):
        if not np.isfinite(array).all():
            raise UMEInputError("image array holds NaN or infinite values")
        array = (np.clip(array, 0.0, 1.0) * 255).round().astype(np.uint8)
    elif array.dtype != np.uint8:
        raise UMEInputError(f"image array dtype must be uint8 or float, got {array.dtype}")
    return Image.fromarray(np.ascontiguousarray(array))


def sample_frame_indices(total: int, num_frames: int | None) -> list[int]:
    """Uniform frame choice of the eval: ``linspace(0, total - 1, num_frames)`` cast to int."""
    if num_frames is None or total <= num_frames:
        return list(range(total))
    return np.linspace(0, total - 1, num_frames).astype(int).tolist()


def pad_frames(frames: list[Image.Image]) -> list[Image.Image]:
    """Repeat the last frame up to a multiple of the temporal patch size."""
    missing = -len(frames) % FRAME_FACTOR
    return frames + [frames[-1]] * missing


def decode_video(source: Path | bytes, num_frames: int | None, max_decoded_pixels: int) -> list[Image.Image]:
    """Decode a video file and keep the ``num_frames`` uniformly sampled frames.

    Raises:
        UMEInputError: PyAV missing, an unreadable file or a video without frames.
    """
    try:
        import av
    except ImportError:
        raise UMEInputError(
            "decoding video files needs PyAV: pip install 'ume-plugins[video]' (or pass the video as a list of frames)"
        ) from None
    opened = io.BytesIO(source) if isinstance(source, bytes) else str(source)
    try:
        with av.open(opened) as container:
            if not container.streams.video:
                raise UMEInputError("file has no video stream")
            stream = container.streams.video[0]
            _check_decoded_size(stream.width, stream.height, max_decoded_pixels)
            total = sum(1 for _ in container.decode(video=0))
        wanted = set(sample_frame_indices(total, num_frames))
        if isinstance(opened, io.BytesIO):
            opened.seek(0)
        with av.open(opened) as container:
            frames = [frame.to_image() for index, frame in enumerate(container.decode(video=0)) if index in wanted]
    except UMEInputError:
        raise
    except (av.error.FFmpegError, OSError, ValueError) as error:
        raise UMEInputError(f"cannot decode video: {error}") from None
    if not frames:
        raise UMEInputError("video has no decodable frames")
    return frames
