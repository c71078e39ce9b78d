"""The slot engine's device state for one shape (slots x capacity), and how a step is run on it.

A step runs eagerly, is replayed from a CUDA graph, or is compiled with ``torch.compile``.

Capacity is bucketed: the KV buffers hold ``capacity`` positions per slot and follow the longest
live rollout (grown and shrunk a bucket at a time), and finished slots are compacted away once no
input waits. Buckets are fine (multiples of 64) when steps run eagerly; with CUDA graphs each
shape costs a capture, so buckets grow by 1.5x and 2x steps (at most ~2 shapes per doubling) and
slot counts are powers of two. On CUDA the decode kernel (:mod:`ume_plugins.engine.attention`)
reads only each slot's live positions, so there a bucket's padding costs memory, not time (H200,
batch 1, 400 live tokens: 2.18 ms per step in the tight bucket, 2.23 ms in one 8x larger; SDPA
2.49 and 4.61 ms), and a call keeps its cache until its slots shrink, saving the captures of
smaller shapes. Where the kernel does not run (the CPU, no Triton) SDPA reads the whole bucket,
and buckets keep its cost near ``slots x longest live length``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from ume_plugins.engine.hf_model import decoder_shape
from ume_plugins.engine.sampling import UniformStreams
from ume_plugins.engine.stages import Budget, Stages
from ume_plugins.engine.step import decode_step

logger = logging.getLogger(__name__)

COMPILE_MODES: tuple[str, ...] = ("auto", "eager", "cuda_graphs", "torch_compile")


@dataclass(frozen=True)
class SlotOptions:
    """How the slot engine runs.

    Attributes:
        max_slots: Most rollouts decoded at once.
        compile: ``"eager"``, ``"cuda_graphs"`` (capture each step shape and replay it),
            ``"torch_compile"`` (the decoder step compiled by ``torch.compile``, its fused kernels
            captured in CUDA graphs like ``"cuda_graphs"`` on CUDA), or ``"auto"`` (CUDA graphs on
            CUDA, else eager).
        compile_backend: ``torch.compile`` backend for ``"torch_compile"`` (None: inductor).
    """

    max_slots: int = 32
    compile: str = "auto"
    compile_backend: str | None = None

    def mode(self, device: torch.device) -> str:
        """The compile mode on ``device`` (``"auto"`` resolved; graphs need CUDA)."""
        if self.compile == "auto" or (self.compile == "cuda_graphs" and device.type != "cuda"):
            return "cuda_graphs" if device.type == "cuda" else "eager"
        return self.compile

    def graphs(self, device: torch.device) -> bool:
        """Whether steps are replayed from CUDA graphs on ``device``."""
        return device.type == "cuda" and self.mode(device) in ("cuda_graphs", "torch_compile")


EAGER_GRANULE = 64
_GRAPH_MIN = 128
_WARMUP_STEPS = 2


def capacity_bucket(length: int, graphs: bool) -> int:
    """The KV capacity that holds ``length`` positions: a multiple of 64, or a 1.5x/2x step for graphs."""
    if not graphs:
        return -(-length // EAGER_GRANULE) * EAGER_GRANULE
    bucket = _GRAPH_MIN
    while bucket < length:
        bucket = bucket * 3 // 2 if bucket & (bucket - 1) == 0 else bucket * 4 // 3
    return bucket


def slot_bucket(live: int, graphs: bool) -> int:
    """Slots kept for ``live`` rollouts: exactly that many, or the next power of two for graphs."""
    return max(1, live) if not graphs else 1 << max(0, live - 1).bit_length()


class SlotTensors:
    """Every per-slot tensor of one shape; a new shape is a new instance (CUDA graphs bind addresses).

    Args:
        model: The ``Qwen2VLForConditionalGeneration``.
        budget: How rollouts end.
        slots: Number of slots.
        capacity: KV positions per slot.
        sampling: Whether rollouts sample (per-slot random streams are kept).
        source: An instance and the indices of its slots to carry over, in order (see :meth:`resized`).
    """

    def __init__(
        self,
        model: torch.nn.Module,
        budget: Budget,
        slots: int,
        capacity: int,
        sampling: bool,
        source: tuple[SlotTensors, torch.Tensor] | None = None,
    ) -> None:
        layers, _, kv_heads, head_dim = decoder_shape(model)
        config = model.config.text_config
        device = model.device
        cuda = device.type == "cuda"
        self.slots, self.capacity = slots, capacity
        self.ids = torch.zeros(slots, capacity, dtype=torch.long, device=device)
        self.lengths = torch.zeros(slots, dtype=torch.long, device=device)
        self.offsets = torch.zeros(slots, dtype=torch.long, device=device)
        self.prompt_lengths = torch.zeros(slots, dtype=torch.long, device=device)
        self.tokens = torch.zeros(slots, dtype=torch.long, device=device)
        self.logits = torch.zeros(slots, config.vocab_size, dtype=torch.float32, device=device)
        self.states = torch.zeros(slots, config.hidden_size, dtype=torch.float32, device=device)
        self.runners: dict[str, Callable[[], None]] = {}
        # The graphs of one shape share a memory pool; a new shape takes a fresh one. Seen on an H200
        # (torch 2.11): once a shared pool's graphs were freed, every later capture into it failed
        # (`use_count > 0` assert): something allocated during a capture outlives its graphs.
        self.graph_pool = torch.cuda.graph_pool_handle() if cuda else None
        # A step ends by writing its flags here; two pinned host copies let the host read step t
        # while step t+1 is queued (see flags_to_host).
        self.flags = torch.zeros(3, slots, dtype=torch.bool, device=device)
        self._host_flags = [torch.zeros(3, slots, dtype=torch.bool, pin_memory=cuda) for _ in range(2 if cuda else 0)]
        self._events = [torch.cuda.Event() for _ in range(2 if cuda else 0)]
        old, index = source if source is not None else (None, None)
        if old is None:
            self.stages = Stages(budget, slots, device)
            self.uniforms = UniformStreams(slots, device) if sampling else None
        else:
            self.stages, self.uniforms = old.stages, old.uniforms
            # New positions repeat the slot's first token, as a fresh slot's do: penalty-neutral padding.
            self.ids[: len(index)] = old.ids[index, :1]
            self.ids[: len(index), : min(capacity, old.capacity)] = old.ids[index, : min(capacity, old.capacity)]
            for name in ("lengths", "offsets", "prompt_lengths", "tokens", "logits", "states"):
                getattr(self, name)[: len(index)] = getattr(old, name)[index]
        shape = (slots, kv_heads, capacity, head_dim)
        self.keys = [self._buffer(shape, model, old and old.keys, index, layer) for layer in range(layers)]
        self.values = [self._buffer(shape, model, old and old.values, index, layer) for layer in range(layers)]

    def _buffer(
        self,
        shape: tuple[int, ...],
        model: torch.nn.Module,
        old: list[torch.Tensor] | None,
        index: torch.Tensor | None,
        layer: int,
    ) -> torch.Tensor:
        """A KV buffer holding the old buffer's slots ``index``.

        The old buffer is freed right away, so a resize never holds two whole caches at once.
        """
        buffer = torch.zeros(shape, dtype=model.dtype, device=model.device)
        if old is not None:
            width = min(shape[2], old[layer].shape[2])
            buffer[: len(index), :, :width] = old[layer][index, :, :width]
            old[layer] = torch.empty(0)
        return buffer

    def flags_to_host(self, step: int) -> tuple[torch.Tensor, torch.cuda.Event | None]:
        """Queue a copy of the step's :attr:`flags` to the host; the copy and the event that marks it done.

        On CUDA the copy goes to one of two pinned buffers (by ``step`` parity) without waiting: read
        it after the event, before step ``step + 2`` is queued. Elsewhere it is a plain copy.
        """
        if not self._host_flags:
            return self.flags.clone(), None
        host, event = self._host_flags[step % 2], self._events[step % 2]
        host.copy_(self.flags, non_blocking=True)
        event.record()
        return host, event

    def resized(self, model: torch.nn.Module, rows: list[int], slots: int, capacity: int) -> SlotTensors:
        """A new instance of shape ``slots x capacity`` holding old slots ``rows`` as its first slots.

        This instance is spent afterwards (its KV buffers are handed over layer by layer).
        """
        index = torch.tensor(rows, dtype=torch.long, device=self.ids.device)
        self.stages.keep(index, slots)
        if self.uniforms is not None:
            self.uniforms.keep(index, slots)
        return SlotTensors(
            model,
            self.stages.budget,
            slots,
            capacity,
            self.uniforms is not None,
            source=(self, index),
        )


class StepRunner:
    """Runs a step function eagerly, or replays it from a CUDA graph captured after a short warm-up.

    A graph replays exactly the kernels it recorded, so it is bound to one :class:`SlotTensors`
    instance and to one engine call (a later call may run other adapters). If capture fails, the
    step runs eagerly from then on.
    """

    def __init__(
        self, step: Callable[[], None], graphs: bool, pool: object | None = None, stream: object | None = None
    ) -> None:
        self.step, self.graphs, self.pool, self.stream = step, graphs, pool, stream
        self.graph: torch.cuda.CUDAGraph | None = None
        self.calls = 0

    def __call__(self) -> None:
        """Run one step."""
        if self.graph is not None:
            self.graph.replay()
            return
        self.calls += 1
        if not self.graphs or self.calls <= _WARMUP_STEPS:
            self.step()
            return
        graph = torch.cuda.CUDAGraph()
        try:
            # One capture stream for all of a thread's graphs (engine.capture); one pool per shape (see SlotTensors).
            # A shape's graph is freed before the next shape's is captured, never kept beside it:
            # recent torch releases free a stream's cuBLAS workspace when a graph captured on it is
            # destroyed, which can break the stream's other live graphs (pytorch/pytorch#193402).
            with torch.cuda.graph(graph, pool=self.pool, stream=self.stream):
                self.step()
        except RuntimeError as error:
            logger.warning("CUDA graph capture failed (%s); decoding eagerly", error)
            self.graphs = False
            self.step()
            return
        self.graph = graph
        graph.replay()


def right_aligned(ids: torch.Tensor, lengths: torch.Tensor, pad_id: int) -> torch.Tensor:
    """Each slot's tokens as ``generate`` lays a batch out: left-padded, the latest token last."""
    width = ids.shape[1]
    index = torch.arange(width, device=ids.device)[None] - (width - lengths[:, None])
    aligned = ids.gather(1, index.clamp(min=0))
    return aligned.masked_fill(index < 0, pad_id)


_COMPILED: dict[tuple[str | None, str], Any] = {}


def compiled_step(backend: str | None, device: torch.device) -> Any:
    """:func:`decode_step` under ``torch.compile`` (one per backend and device type, reused across calls)."""
    key = (backend, device.type)
    if key not in _COMPILED:
        # Dynamic shapes: slot counts and capacities change during a call; one compilation serves them
        # all. No "reduce-overhead": on CUDA the step runner captures the whole step (choice, compiled
        # decoder, LM head) in one graph of its own, so nothing of a step runs eagerly.
        _COMPILED[key] = torch.compile(decode_step, backend=backend or "inductor", dynamic=True)
    return _COMPILED[key]
