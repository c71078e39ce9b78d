from __future__ import annotations

import os

import pytest
import torch
from PIL import Image
from transformers import LogitsProcessor

# Without a GPU, Triton kernels (the decode attention) run only in Triton's interpreter, which Triton
# picks once, when first imported: turn it on before anything imports Triton.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if os.environ.get("UME_SLOW") == "1":
        return
    skip = pytest.mark.skip(reason="needs real UME-R1 weights or a GPU; set UME_SLOW=1")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def tiny_path():
    import ume_plugins

    return ume_plugins.tiny_checkpoint_path()


@pytest.fixture(scope="session")
def model(tiny_path):
    """The tiny checkpoint as a SentenceTransformer (shared: tests must not change its settings)."""
    import ume_plugins

    return ume_plugins.load("ume-r1-tiny", device="cpu")


@pytest.fixture(scope="session")
def module(model):
    return model[0]


def solid(color: tuple[int, int, int], size: tuple[int, int] = (64, 64)) -> Image.Image:
    return Image.new("RGB", size, color)


def gradient(size: tuple[int, int] = (84, 56), seed: int = 0) -> Image.Image:
    generator = torch.Generator().manual_seed(seed)
    pixels = torch.randint(0, 256, (size[1], size[0], 3), generator=generator, dtype=torch.uint8)
    return Image.fromarray(pixels.numpy())


class ScriptedDecoding(LogitsProcessor):
    """Forces each row to write ``script`` token by token, whatever the model predicts.

    The number of tokens written so far is read from the ids after the last
    ``<|im_start|>assistant\\n``, so one instance serves any number of ``generate`` calls.
    """

    def __init__(self, tokenizer, script: str):
        self.script = tokenizer(script, add_special_tokens=False)["input_ids"]
        self.im_start = tokenizer.convert_tokens_to_ids("<|im_start|>")
        self.header = len(tokenizer("assistant\n", add_special_tokens=False)["input_ids"])
        self.eos = tokenizer.convert_tokens_to_ids("<|im_end|>")

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        forced = torch.full_like(scores, float("-inf"))
        for row, ids in enumerate(input_ids.tolist()):
            start = len(ids) - ids[::-1].index(self.im_start) + self.header
            step = len(ids) - start
            token = self.script[step] if step < len(self.script) else self.eos
            forced[row, token] = 0.0
        return forced


REASONING = "<think> a small picture </think><answer> a shape </answer><gen_emb>"


def write_video(path, frames: list[Image.Image], fps: int = 4) -> None:
    """Encode frames as an MPEG-4 file with PyAV."""
    import av

    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("mpeg4", rate=fps)
        stream.width, stream.height = frames[0].size
        stream.pix_fmt = "yuv420p"
        for frame in frames:
            for packet in stream.encode(av.VideoFrame.from_image(frame)):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


@pytest.fixture(scope="session")
def http_server(tmp_path_factory):
    """A local HTTP server on 127.0.0.1 serving a folder; yields (base_url, folder)."""
    import functools
    import http.server
    import threading

    class QuietHandler(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    folder = tmp_path_factory.mktemp("served")
    handler = functools.partial(QuietHandler, directory=str(folder))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", folder
    server.shutdown()
