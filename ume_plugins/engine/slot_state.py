"""The slot engine's device state for one shape (slots x capacity), and how a step is run on it.

Capacity is bucketed: the KV buffers hold ``capacity`` positions per slot and every step reads all
of them, so the buffers follow the longest live rollout (grown and shrunk a bucket at a time),
and finished slots are compacted away once no input waits. A step's cost thus tracks
``slots x bucket(longest live length)`` instead of a fixed maximum. Buckets are fine (multiples of
64) when steps run eagerly; with CUDA graphs each shape costs a capture, so buckets grow by 1.5x
and 2x steps (at most ~2 shapes per doubling) and slot counts are powers of two. Kernels that read
each slot's own length (paged or FlexAttention kernels) would remove the remaining padding; they
are not used because no such kernel is portable across the CPU, CUDA and the transformers window.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import torch

from ume_plugins.engine.sampling import UniformStreams
from ume_plugins.engine.stages import Budget, Stages

logger = logging.getLogger(__name__)

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
    """

    def __init__(
        self,
        model: torch.nn.Module,
        budget: Budget,
        slots: int,
        capacity: int,
        sampling: bool,
        static_addresses: bool = False,
    ) -> None:
        config = model.config.text_config
        layers, kv_heads = config.num_hidden_layers, config.num_key_value_heads
        head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
        device, dtype = model.device, model.dtype
        self.slots, self.capacity = slots, capacity
        shape = (slots, kv_heads, capacity, head_dim)
        self.keys = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(layers)]
        self.values = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(layers)]
        self.static_addresses = static_addresses
        if static_addresses:  # torch.compile's CUDA graphs then accept the step writing into them
            for buffer in self.keys + self.values:
                torch._dynamo.mark_static_address(buffer)
        self.ids = torch.zeros(slots, capacity, dtype=torch.long, device=device)
        self.lengths = torch.zeros(slots, dtype=torch.long, device=device)
        self.offsets = torch.zeros(slots, dtype=torch.long, device=device)
        self.prompt_lengths = torch.zeros(slots, dtype=torch.long, device=device)
        self.tokens = torch.zeros(slots, dtype=torch.long, device=device)
        self.logits = torch.zeros(slots, config.vocab_size, dtype=torch.float32, device=device)
        self.states = torch.zeros(slots, config.hidden_size, dtype=torch.float32, device=device)
        self.stages = Stages(budget, slots, device)
        self.uniforms = UniformStreams(slots, device) if sampling else None
        self.runners: dict[str, Callable[[], None]] = {}

    def resized(self, model: torch.nn.Module, rows: list[int], slots: int, capacity: int) -> SlotTensors:
        """A new instance of shape ``slots x capacity`` holding old slots ``rows`` as its first slots."""
        new = SlotTensors(model, self.stages.budget, slots, capacity, self.uniforms is not None, self.static_addresses)
        index = torch.tensor(rows, dtype=torch.long, device=self.ids.device)
        width = min(capacity, self.capacity)
        count = len(rows)
        for old, fresh in zip(self.keys + self.values, new.keys + new.values, strict=True):
            fresh[:count, :, :width] = old[index, :, :width]
        new.ids[:count, :width] = self.ids[index, :width]
        for name in ("lengths", "offsets", "prompt_lengths", "tokens", "logits", "states"):
            getattr(new, name)[:count] = getattr(self, name)[index]
        self.stages.keep(index, slots)
        new.stages = self.stages
        if self.uniforms is not None:
            self.uniforms.keep(index, slots)
            new.uniforms = self.uniforms
        return new


class StepRunner:
    """Runs a step function eagerly, or replays it from a CUDA graph captured after a short warm-up.

    A graph replays exactly the kernels it recorded, so it is bound to one :class:`SlotTensors`
    instance and to one engine call (a later call may run other adapters). If capture fails, the
    step runs eagerly from then on.
    """

    def __init__(self, step: Callable[[], None], graphs: bool, pool: object | None) -> None:
        self.step, self.graphs, self.pool = step, graphs, pool
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
            with torch.cuda.graph(graph, pool=self.pool):
                self.step()
        except RuntimeError as error:
            logger.warning("CUDA graph capture failed (%s); decoding eagerly", error)
            self.graphs = False
            self.step()
            return
        self.graph = graph
        graph.replay()
