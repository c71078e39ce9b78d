"""The stream CUDA graphs are captured on: one per thread and device, reused by every call.

A graph is captured on a side stream, and every stream a GEMM ran on gets a cuBLAS workspace of
its own that torch keeps in a map by stream. With a new stream per call, GPU memory grew by about
one such workspace a call (+198 MiB over 20 batch-1 calls on an H200, torch 2.11; the workspace is
the likely holder, not yet confirmed on a GPU). One stream per thread bounds that to the threads
that decode; a thread's calls run one after another, and each frees its graphs before the next
captures (see :class:`~ume_plugins.engine.slot_state.StepRunner`).
"""

from __future__ import annotations

import threading

import torch

_local = threading.local()


def capture_stream(device: torch.device) -> torch.cuda.Stream:
    """This thread's capture stream on CUDA ``device`` (created on first use)."""
    streams: dict[torch.device, torch.cuda.Stream] = _local.__dict__.setdefault("streams", {})
    key = indexed(device)
    if key not in streams:
        streams[key] = torch.cuda.Stream(key)
    return streams[key]


def indexed(device: torch.device) -> torch.device:
    """``device`` with its index: ``cuda`` is the current CUDA device, ``cpu`` is ``cpu:0``."""
    if device.index is not None:
        return device
    return torch.device(device.type, torch.cuda.current_device() if device.type == "cuda" else 0)
