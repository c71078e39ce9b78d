from __future__ import annotations

import threading

import pytest
import torch

from ume_plugins.engine.capture import capture_stream

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="capture streams are CUDA streams")


def test_a_thread_captures_every_call_on_one_stream_and_threads_on_their_own():
    # A stream per call would leave a cuBLAS workspace behind each call.
    device = torch.device("cuda", torch.cuda.current_device())
    first = capture_stream(device)
    assert capture_stream(device) is first and capture_stream(torch.device("cuda")) is first
    other = []
    thread = threading.Thread(target=lambda: other.append(capture_stream(device)))
    thread.start()
    thread.join()
    assert other[0] is not first and other[0].device == device
