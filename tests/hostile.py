"""The hostile-input corpus: generated files, a misbehaving local HTTP server and the case table.

Nothing here is committed as a binary: every file is written by :func:`write_files`. Each case
names the raw input it builds and its documented outcome: ``VECTOR`` (a finite, L2-normalised
vector; ``same_as`` names an input whose vector must be identical) or a fragment of the
:class:`~ume_plugins.UMEInputError` message.

Print the table (running every case against the tiny checkpoint)::

    .venv/bin/python -m tests.hostile
"""

from __future__ import annotations

import base64
import contextlib
import http.server
import io
import socket
import struct
import threading
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from tests.conftest import gradient, solid, write_video

VECTOR = "vector"
# Settings of the model the corpus runs against (saved with it, so the CLI sees them too).
MAX_LENGTH = 160
URL_TIMEOUT = 0.5
MAX_URL_BYTES = 64 * 1024
LONG_TEXT = "the quick brown fox jumps over the lazy dog. " * 2000


@dataclass(frozen=True)
class Env:
    """Where a case finds its files and URLs."""

    folder: Path
    base_url: str
    closed_url: str

    def file(self, name: str) -> str:
        return str(self.folder / name)

    def url(self, route: str) -> str:
        return f"{self.base_url}/{route}"


@dataclass(frozen=True)
class Case:
    """One hostile input and its documented outcome."""

    group: str
    name: str
    make: Callable[[Env], Any]
    outcome: str
    same_as: Callable[[Env], Any] | None = None
    note: str = ""

    @property
    def embeds(self) -> bool:
        return self.outcome == VECTOR


def _file(name: str) -> Callable[[Env], str]:
    return lambda env: env.file(name)


def _url(route: str) -> Callable[[Env], str]:
    return lambda env: env.url(route)


def _png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def png_declaring(width: int, height: int) -> bytes:
    """A tiny PNG whose header declares ``width`` x ``height`` pixels (a decompression bomb's shape)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")
    )


def write_files(folder: Path) -> None:
    """Write every file the corpus refers to."""
    image = gradient((84, 56))
    image.save(folder / "photo.png")
    jpeg = io.BytesIO()
    image.save(jpeg, format="JPEG")
    (folder / "truncated.jpg").write_bytes(jpeg.getvalue()[: len(jpeg.getvalue()) // 2])
    (folder / "truncated.png").write_bytes(_png(image)[:80])
    (folder / "text.png").write_text("this is not an image\n")
    (folder / "empty.png").write_bytes(b"")
    (folder / "folder.png").mkdir()
    solid((200, 30, 30), (1, 1)).save(folder / "one-pixel.png")
    solid((0, 0, 0), (10000, 1)).save(folder / "wide-10000.png")
    solid((0, 0, 0), (200, 1)).save(folder / "wide-200.png")
    gradient((64, 64)).convert("CMYK").save(folder / "cmyk.jpg")
    Image.new("RGBA", (56, 56), (255, 0, 0, 0)).save(folder / "transparent.png")
    solid((255, 255, 255), (56, 56)).save(folder / "white.png")
    gradient((64, 64)).convert("P").save(folder / "palette.png")
    transparent_palette = gradient((64, 64)).convert("P")
    transparent_palette.info["transparency"] = 0
    transparent_palette.save(folder / "palette-transparent.png", transparency=0)
    gradient((64, 64)).convert("LA").save(folder / "gray-alpha.png")
    gradient((64, 64)).convert("L").save(folder / "gray.png")
    gradient((64, 64)).convert("1").save(folder / "bilevel.png")
    deep = (np.arange(64 * 64, dtype=np.uint32).reshape(64, 64) * 16).astype(np.uint16)
    Image.fromarray(deep).save(folder / "deep-16bit.png")
    Image.fromarray(np.linspace(-5, 5, 64 * 64, dtype=np.float32).reshape(64, 64)).save(folder / "float.tif")
    red, blue = solid((255, 0, 0)), solid((0, 0, 255))
    red.save(folder / "animated.gif", save_all=True, append_images=[blue], duration=100, loop=0)
    red.save(folder / "first-frame.gif")
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees clockwise to display
    image.save(folder / "rotated.jpg", exif=exif.tobytes(), quality=95)
    image.save(folder / "unrotated.jpg", quality=95)
    (folder / "bomb.png").write_bytes(png_declaring(100_000, 100_000))
    (folder / "over-cap.png").write_bytes(png_declaring(12_000, 12_000))
    frames = [solid((20 * i, 100, 200 - 20 * i), (56, 56)) for i in range(5)]
    write_video(folder / "clip.mp4", frames)
    write_video(folder / "one-frame.mp4", frames[:1])
    (folder / "garbage.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42" + b"garbage" * 200)
    (folder / "empty.mp4").write_bytes(b"")
    (folder / "latin1.txt").write_bytes("café crème brûlée".encode("latin-1"))
    (folder / "blank.txt").write_text("  \n\t\n")
    (folder / "long.txt").write_text(LONG_TEXT)


CASES: tuple[Case, ...] = (
    # Files
    Case("file", "missing path (str)", _file("missing.png"), "file not found"),
    Case("file", "missing path (pathlib)", lambda env: env.folder / "missing.jpg", "file not found"),
    Case("file", "directory instead of file", _file("folder.png"), "not a regular file"),
    Case("file", "zero-byte file", _file("empty.png"), "file is empty"),
    Case("file", "truncated JPEG", _file("truncated.jpg"), "cannot decode image"),
    Case("file", "truncated PNG", _file("truncated.png"), "cannot decode image"),
    Case("file", "text file named .png", _file("text.png"), "cannot decode image"),
    Case("file", "path with a NUL byte", lambda env: env.file("bad\0name.png"), "file not found"),
    # Image geometry and modes
    Case("image", "1x1 image", _file("one-pixel.png"), VECTOR, note="upscaled to 56x56 by the first resize"),
    Case("image", "0x0 image (PIL)", lambda env: Image.new("RGB", (0, 0)), "empty side"),
    Case("image", "0x10 image array", lambda env: np.zeros((0, 10, 3), np.uint8), "image array is empty"),
    Case("image", "10000x1 image (aspect 10000)", _file("wide-10000.png"), "aspect ratio 10000 exceeds 200"),
    Case("image", "200x1 image (aspect 200, the limit)", _file("wide-200.png"), VECTOR, note="resized to 196x28"),
    Case("image", "CMYK JPEG", _file("cmyk.jpg"), VECTOR, note="converted to RGB"),
    Case(
        "image",
        "RGBA PNG, fully transparent",
        _file("transparent.png"),
        VECTOR,
        same_as=_file("white.png"),
        note="composited over white",
    ),
    Case("image", "P (palette) PNG", _file("palette.png"), VECTOR),
    Case("image", "P PNG with a transparent colour", _file("palette-transparent.png"), VECTOR),
    Case("image", "LA PNG", _file("gray-alpha.png"), VECTOR),
    Case("image", "L (grayscale) PNG", _file("gray.png"), VECTOR),
    Case("image", "1-bit PNG", _file("bilevel.png"), VECTOR),
    Case("image", "I;16 PNG", _file("deep-16bit.png"), VECTOR, note="top 8 bits kept"),
    Case("image", "F (32-bit float) TIFF", _file("float.tif"), VECTOR, note="min-max scaled to 8 bits"),
    Case(
        "image",
        "animated GIF",
        _file("animated.gif"),
        VECTOR,
        same_as=_file("first-frame.gif"),
        note="first frame only",
    ),
    Case(
        "image",
        "EXIF-rotated JPEG",
        _file("rotated.jpg"),
        VECTOR,
        same_as=lambda env: Image.open(env.file("unrotated.jpg")).transpose(Image.Transpose.ROTATE_270),
        note="turned upright first",
    ),
    Case("image", "decompression bomb (PNG declaring 100000x100000)", _file("bomb.png"), "possible decompression bomb"),
    Case("image", "PNG declaring 12000x12000 (above the 128 Mpx cap)", _file("over-cap.png"), "decoding cap"),
    Case("image", "BytesIO of a PNG", lambda env: io.BytesIO(_png(gradient())), VECTOR, same_as=_file("photo.png")),
    Case("image", "empty BytesIO", lambda env: io.BytesIO(), "image stream is empty"),
    Case("image", "empty bytes", lambda env: b"", "image bytes are empty"),
    Case("image", "non-UTF-8, non-image bytes", lambda env: b"\xff\xfe\xfa\x00 not utf-8", "cannot decode image"),
    Case("image", "int64 array", lambda env: np.zeros((8, 8, 3), np.int64), "dtype must be uint8 or float"),
    Case("image", "float array holding NaN", lambda env: np.full((8, 8, 3), np.nan, np.float32), "NaN"),
    Case("image", "5-D array", lambda env: np.zeros((1, 1, 2, 2, 3), np.uint8), "2 or 3 dimensions"),
    Case(
        "image",
        "data: URI with invalid base64",
        lambda env: "data:image/png;base64,@@@",
        "invalid base64",
    ),
    Case("image", "data: URI not base64-encoded", lambda env: "data:image/png,rawbytes", "must be base64-encoded"),
    Case(
        "image",
        "data: URI of a PNG",
        lambda env: "data:image/png;base64," + base64.b64encode(_png(gradient())).decode(),
        VECTOR,
        same_as=_file("photo.png"),
    ),
    # Text
    Case("text", "empty string", lambda env: "", VECTOR, note="no text: blank image + empty TEXT slot, warning"),
    Case("text", "whitespace-only text", lambda env: " \n\t ", VECTOR, same_as=lambda env: "", note="= empty string"),
    Case(
        "text",
        f"very long text ({len(LONG_TEXT)} chars)",
        lambda env: LONG_TEXT,
        VECTOR,
        note=f"text truncated to fit max_length ({MAX_LENGTH} here), warning",
    ),
    Case(
        "text",
        "text with a lone surrogate (undecodable bytes)",
        lambda env: b"caf\xe9".decode("utf-8", "surrogateescape"),
        "not valid Unicode",
    ),
    Case("text", "text with a NUL character", lambda env: "before\0after", VECTOR),
    Case(
        "text",
        "text with stray <|image_pad|>",
        lambda env: "a red fox <|image_pad|>",
        VECTOR,
        same_as=lambda env: "a red fox",
        note="placeholder removed",
    ),
    Case("text", "text holding <disc_emb> and <|im_end|>", lambda env: "x <disc_emb> y <|im_end|> z", VECTOR),
    Case("text", "text mentioning a file name", lambda env: "see the photo of my cat.png", VECTOR, note="text"),
    # Structure
    Case("structure", "None", lambda env: None, "got None"),
    Case("structure", "nested list", lambda env: ["a", "b"], "nested list"),
    Case("structure", "nested list of lists", lambda env: [["a"], ["b"]], "nested list"),
    Case("structure", "float", lambda env: 3.5, "unsupported input type float"),
    Case("structure", "dict with an unknown key", lambda env: {"txt": "typo"}, "unknown dict key(s) ['txt']"),
    Case(
        "structure",
        "dict with a known and an unknown key",
        lambda env: {"text": "ok", "caption": "x"},
        "unknown dict key(s) ['caption']",
    ),
    Case("structure", "empty dict", lambda env: {}, "dict has no content"),
    Case("structure", "dict of Nones", lambda env: {"text": None, "image": None, "video": None}, "dict has no content"),
    Case(
        "structure",
        "conversation of one user message",
        lambda env: [{"role": "user", "content": "hi"}],
        VECTOR,
        same_as=lambda env: "hi",
        note="= 'hi'",
    ),
    Case("structure", "chat message of the system", lambda env: {"role": "system", "content": "hi"}, "'user' message"),
    Case("structure", "dict with non-string text", lambda env: {"text": 5}, "'text' must be a string"),
    Case("structure", "dict with an empty image list", lambda env: {"image": []}, "'image' is an empty list"),
    Case(
        "structure",
        "several images, one missing",
        lambda env: {"text": "two", "image": [env.file("photo.png"), env.file("missing.png")]},
        "file not found",
    ),
    Case(
        "structure",
        "video file where an image is expected",
        lambda env: {"image": env.file("clip.mp4")},
        "video where an image was expected",
    ),
    # Video
    Case("video", "empty frame list", lambda env: {"video": []}, "empty frame list"),
    Case("video", "frames array with 0 frames", lambda env: {"video": np.zeros((0, 56, 56, 3), np.uint8)}, "no frames"),
    Case(
        "video",
        "one-frame list",
        lambda env: {"video": [solid((9, 9, 9), (56, 56))]},
        VECTOR,
        note="padded to 2 frames",
    ),
    Case("video", "one-frame video file", _file("one-frame.mp4"), VECTOR, note="padded to 2 frames"),
    Case("video", "5-frame video file", _file("clip.mp4"), VECTOR, note="padded to 6 frames"),
    Case("video", "unreadable video file", _file("garbage.mp4"), "cannot decode video"),
    Case("video", "zero-byte video file", _file("empty.mp4"), "file is empty"),
    Case(
        "video",
        "frames of unequal sizes",
        lambda env: {"video": [solid((0, 0, 0), (56, 56)), solid((0, 0, 0), (112, 56))]},
        "frames differ in size",
    ),
    # URLs (a local server on 127.0.0.1)
    Case("url", "ftp:// URL", lambda env: "ftp://example.com/cat.png", "unsupported URL scheme 'ftp'"),
    Case("url", "image URL", _url("photo.png"), VECTOR, same_as=_file("photo.png")),
    Case("url", "unreachable URL (closed port)", lambda env: env.closed_url, "could not be fetched"),
    Case("url", "URL that never answers", _url("stall.png"), "timed out", note=f"url_timeout={URL_TIMEOUT} s"),
    Case("url", "URL returning HTML", _url("page.png"), "returned 'text/html', not an image or video"),
    Case("url", "URL without a Content-Type", _url("untyped.png"), "without a Content-Type"),
    Case("url", "URL declaring an oversized body", _url("declared-big.png"), "bytes exceeds the 65536-byte cap"),
    Case("url", "URL streaming an oversized body", _url("streamed-big.png"), "body exceeds the 65536-byte cap"),
    Case("url", "URL with an empty body", _url("empty-body.png"), "empty body"),
    Case("url", "URL answering 404", _url("missing.png"), "HTTP 404"),
    Case("url", "URL redirected twice", _url("redirect/2"), VECTOR, same_as=_file("photo.png")),
    Case("url", "URL redirected in a loop", _url("loop.png"), "redirected more than 3 times"),
    Case("url", "URL redirected to file://", _url("to-file.png"), "redirected to a non-http(s) location"),
    Case("url", "file:// URL (not allowed)", lambda env: "file:///etc/hostname.png", "file:// URLs are disabled"),
)


class HostileHandler(http.server.BaseHTTPRequestHandler):
    """Serves the corpus folder, plus routes that misbehave in every way the corpus needs."""

    folder: Path
    release: threading.Event
    arrived: threading.Event

    def log_message(self, *args: Any) -> None:
        pass

    def do_GET(self) -> None:  # noqa: N802 - the name http.server dispatches to
        route = self.path.lstrip("/")
        try:
            self._answer(route)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client gave up first, as it should

    def _answer(self, route: str) -> None:
        if route == "stall.png":
            self.release.wait(timeout=10)  # until released: the client's timeout must fire first
        elif route == "gate.png":
            self.arrived.set()
            self.release.wait(timeout=300)  # until released: holds a job in the middle of a chunk
            self._send(200, (self.folder / "photo.png").read_bytes(), "image/png")
        elif route == "page.png":
            self._send(200, b"<html><body>not an image</body></html>", "text/html; charset=utf-8")
        elif route == "untyped.png":
            self._send(200, _png(gradient()), None)
        elif route == "declared-big.png":
            self._send(200, b"\0" * (MAX_URL_BYTES + 1), "image/png")
        elif route == "streamed-big.png":
            self.send_response(200)
            self.send_header("Content-Type", "image/png")
            self.end_headers()  # no Content-Length: the body ends when the connection closes
            self.wfile.write(b"\0" * (MAX_URL_BYTES * 2))
        elif route == "empty-body.png":
            self._send(200, b"", "image/png")
        elif route.startswith("redirect/"):
            hops = int(route.split("/")[1])
            self._redirect(f"/redirect/{hops - 1}" if hops > 1 else "/photo.png")
        elif route == "loop.png":
            self._redirect("/loop.png")
        elif route == "to-file.png":
            self._redirect("file:///etc/hostname")
        elif route == "trickle.png":
            self.send_response(200)
            self.send_header("Content-Type", "image/png")
            self.end_headers()
            while not self.release.wait(timeout=0.05):
                self.wfile.write(b"\0")
                self.wfile.flush()
        elif (self.folder / route).is_file():
            self._send(200, (self.folder / route).read_bytes(), "image/png")
        else:
            self._send(404, b"not found", "text/plain")

    def _send(self, code: int, body: bytes, content_type: str | None) -> None:
        self.send_response(code)
        if content_type:
            self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _redirect(self, location: str) -> None:
        self.send_response(302)
        self.send_header("Location", location)
        self.send_header("Content-Length", "0")
        self.end_headers()


@dataclass(frozen=True)
class Server:
    """A running hostile server.

    Attributes:
        base_url: ``http://127.0.0.1:PORT``.
        arrived: Set once ``/gate.png`` was requested.
        release: Set to let ``/gate.png`` and ``/stall.png`` answer (set at shutdown anyway).
    """

    base_url: str
    arrived: threading.Event
    release: threading.Event


@contextlib.contextmanager
def hostile_server(folder: Path) -> Iterator[Server]:
    """Serve ``folder`` and the misbehaving routes on 127.0.0.1."""
    events = {"release": threading.Event(), "arrived": threading.Event()}
    handler = type("Handler", (HostileHandler,), {"folder": folder, **events})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield Server(f"http://127.0.0.1:{server.server_address[1]}", **events)
    finally:
        events["release"].set()
        server.shutdown()
        server.server_close()


def closed_port_url() -> str:
    """A URL on 127.0.0.1 where nothing listens."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    return f"http://127.0.0.1:{port}/photo.png"


@contextlib.contextmanager
def hostile_env(folder: Path) -> Iterator[Env]:
    """The corpus files written into ``folder``, served by a hostile server."""
    write_files(folder)
    with hostile_server(folder) as server:
        yield Env(folder=folder, base_url=server.base_url, closed_url=closed_port_url())


def corpus_model():
    """The tiny checkpoint with the corpus settings, in discriminative mode (one forward pass)."""
    import ume_plugins

    return ume_plugins.load(
        "ume-r1-tiny",
        device="cpu",
        mode="discriminative",
        max_length=MAX_LENGTH,
        url_timeout=URL_TIMEOUT,
        max_url_bytes=MAX_URL_BYTES,
    )


def outcome_of(model, raw: Any) -> tuple[str, np.ndarray | None]:
    """``("vector", v)`` or ``("UMEInputError: message", None)`` for one input encoded alone."""
    from ume_plugins import UMEInputError

    try:
        return VECTOR, model.encode([raw], show_progress_bar=False)[0]
    except UMEInputError as error:
        return f"UMEInputError: {error}", None


def corpus_table(model, env: Env) -> str:
    """The corpus as a Markdown table: case, documented outcome, observed outcome."""
    lines = ["| group | case | outcome |", "|---|---|---|"]
    for case in CASES:
        observed, _ = outcome_of(model, case.make(env))
        if case.embeds:
            shown = "vector" + (f" ({case.note})" if case.note else "")
        else:
            # Paths and ports change from run to run; the table should not.
            for varying, stable in (
                (str(env.folder), "..."),
                (env.base_url, "http://127.0.0.1:PORT"),
                (env.closed_url, "http://127.0.0.1:CLOSED/photo.png"),
            ):
                observed = observed.replace(varying, stable)
            shown = f"`{observed}`"
        cells = (case.group, case.name, shown)
        lines.append("| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |")
    return "\n".join(lines)


def main() -> None:
    """Print the corpus table."""
    import logging
    import tempfile

    logging.disable(logging.WARNING)
    model = corpus_model()
    with tempfile.TemporaryDirectory() as folder, hostile_env(Path(folder)) as env:
        print(corpus_table(model, env))


if __name__ == "__main__":
    main()
