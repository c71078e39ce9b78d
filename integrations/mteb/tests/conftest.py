from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image


@pytest.fixture(scope="session")
def tiny_path() -> Path:
    import ume_plugins

    return ume_plugins.tiny_checkpoint_path()


@pytest.fixture(scope="session")
def disc_encoder(tiny_path):
    import ume_mteb

    return ume_mteb.load_model("ume-r1-tiny", mode="discriminative", device="cpu")


@pytest.fixture(scope="session")
def gen_encoder(tiny_path):
    import ume_mteb

    return ume_mteb.load_model("ume-r1-tiny", mode="generative", device="cpu", generation_kwargs={"max_new_tokens": 1})


def random_image(path: Path, seed: int, size: tuple[int, int] = (84, 112)) -> Path:
    pixels = np.random.default_rng(seed).integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)
    return path


def random_video(path: Path, seed: int, frames: int = 10) -> Path:
    import av

    rng = np.random.default_rng(seed)
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("h264", rate=8)
        stream.width, stream.height, stream.pix_fmt = 64, 64, "yuv420p"
        for _ in range(frames):
            frame = av.VideoFrame.from_ndarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8), format="rgb24")
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


@pytest.fixture(scope="session")
def files():
    """Writers for test data: ``files.image(path, seed)``, ``files.video(path, seed)``, ``files.jsonl(path, rows)``."""
    from types import SimpleNamespace

    return SimpleNamespace(image=random_image, video=random_video, jsonl=write_jsonl)
