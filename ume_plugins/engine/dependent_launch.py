"""Programmatic dependent launch: a step's Triton kernels start while the kernel before them finishes.

At one slot a decode step is ~170 short kernels in a row, and each boundary costs the GPU the
previous kernel's tail (its last programs draining) plus the next one's start (its programs
launching, their first loads in flight). On sm_90 and newer a kernel launched with Triton's
``launch_pdl`` may start before the kernel ahead of it in the stream has finished. Our kernels
that take it (the one-slot GEMVs, the fused q/k/v projection with rotary, the decode attention):

1. prefetch into L2 what no kernel writes during a step (their weight rows), then
2. wait for the previous kernel (``griddepcontrol.wait``: its writes are visible after it), before
   they load or store anything else, then
3. let the next kernel launch (``griddepcontrol.launch_dependents``).

So a boundary overlaps the next kernel's launch and weight traffic with the previous one's tail,
and nothing that kernel reads or writes is touched before it is done. Checked once per process and
device, before any capture: two dependent launches captured in a CUDA graph and replayed must give
the modules' results; anything else (an older GPU, driver or Triton) keeps the plain launches.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator

import torch

from ume_plugins.engine.capture import capture_stream, indexed

logger = logging.getLogger(__name__)

_usable: dict[torch.device, bool] = {}
_switched_off = False


def enabled(device: torch.device) -> bool:
    """Whether kernels launched now on ``device`` take dependent launch (see the module docstring).

    Never decided inside a capture (the check captures a graph of its own): there, unchecked means no.
    """
    if device.type != "cuda" or _switched_off:
        return False
    key = indexed(device)
    if key not in _usable:
        if torch.cuda.is_current_stream_capturing():
            return False
        _usable[key] = _check(key)
    return _usable[key]


def prepare(device: torch.device) -> None:
    """Run the once-per-device check now, before a capture that would otherwise launch without it."""
    enabled(device)


@contextlib.contextmanager
def switched_off() -> Iterator[None]:
    """Launch without dependent launch inside the block (to measure what it is worth)."""
    global _switched_off
    previous, _switched_off = _switched_off, True
    try:
        yield
    finally:
        _switched_off = previous


def _check(device: torch.device) -> bool:
    if torch.cuda.get_device_capability(device) < (9, 0):
        return False
    from ume_plugins.engine import gemv

    try:
        generator = torch.Generator(device).manual_seed(0)
        x = torch.randn(1, 256, generator=generator, device=device, dtype=torch.bfloat16)
        first, second = (
            torch.randn(256, 256, generator=generator, device=device, dtype=torch.bfloat16) / 16 for _ in range(2)
        )
        config = gemv.default_config(256, 256, gemv.multiprocessors(device))
        expected = gemv.reference_linear(gemv.reference_linear(x, first), second, residual=x)
        for _ in range(2):  # the first call builds the kernel outside the capture
            gemv.linear_with(config, x, first, dependent=True)
        graph, stream = torch.cuda.CUDAGraph(), capture_stream(device)
        stream.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.graph(graph, stream=stream):
            hidden = gemv.linear_with(config, x, first, dependent=True)
            out = gemv.linear_with(config, hidden, second, residual=x, dependent=True)
        graph.replay()
        torch.cuda.synchronize(device)
        agrees = gemv.agrees(out, expected, torch.bfloat16)
    except Exception as error:  # noqa: BLE001 - any failure means: plain launches
        logger.warning("Dependent kernel launch does not work here (%s); not using it", error)
        return False
    if not agrees:
        logger.warning("Dependent kernel launch gave other results than the modules here; not using it")
    return agrees
