"""Whether, and with which block sizes, a device runs a layer's projections as GEMV kernels.

Decided once per process, device, dtype and layer shape (:func:`gemv_choice`), before any step is
captured. Each unit's calls run on random weights of the layer's shape:

- on the CPU (Triton's interpreter) the kernel must build and agree with the modules;
- on CUDA a few launch configurations per call (:func:`candidate_configs`) must each build and
  agree; the fastest is kept (:func:`~ume_plugins.engine.gemv.use_config`), and a unit is taken
  where its calls then beat the modules'.

Timings are CUDA-graph replays (the way the engine runs a step) over copies of the weights that
together overflow the L2 cache: in a step every layer's weights come from memory, while a weight
timed alone would come from the cache after its first call.
"""

from __future__ import annotations

import functools
import logging
import math
from collections.abc import Callable, Hashable
from typing import NamedTuple

import torch

from ume_plugins.engine import gemv
from ume_plugins.engine.attention import triton_available
from ume_plugins.engine.capture import capture_stream
from ume_plugins.engine.gemv import (
    KernelConfig,
    agrees,
    decode_linear,
    default_config,
    multiprocessors,
    reference_linear,
    use_config,
)

logger = logging.getLogger(__name__)

# The three places a layer can take the kernel: the fused query/key/value projection after the input
# norm, the output projection with its residual, and the gated MLP (after its norm) with its down
# projection and residual.
UNITS = ("qkv", "output", "mlp")

# Weight copies a timing cycles through hold at least this many times the L2 cache.
_COLD_FACTOR = 2
_MAX_COPIES = 64
# Calls captured per timed graph (at least), so that a replay's launch is a small share of it.
_CALLS_PER_GRAPH = 20
# Unpipelined, a program's loop has one step's loads in flight: the GPU issues in order and waits on
# them before the next step's. At one slot the programs are few (a few per multiprocessor), so that
# caps the bytes in flight well below what the bandwidth needs. Pipelined (Triton copies the next
# steps' tiles into shared memory asynchronously: cp.async on sm_80+), two more steps are in flight.
_PIPELINED_STAGES = 3

Timer = Callable[[dict[Hashable, Callable[[], None]], int], dict[Hashable, float]]


class LayerShape(NamedTuple):
    """What :func:`gemv_choice` needs of a decoder layer: its projections' sizes."""

    hidden: int
    qkv_out: int
    qkv_bias: bool
    attention_width: int
    intermediate: int

    @classmethod
    def of(cls, layer: torch.nn.Module) -> LayerShape:
        """The shape of a Qwen2-style decoder layer with plain ``torch.nn.Linear`` projections."""
        attention, mlp = layer.self_attn, layer.mlp
        return cls(
            hidden=attention.o_proj.weight.shape[0],
            qkv_out=sum(getattr(attention, name).weight.shape[0] for name in ("q_proj", "k_proj", "v_proj")),
            qkv_bias=attention.q_proj.bias is not None,
            attention_width=attention.o_proj.weight.shape[1],
            intermediate=mlp.gate_proj.weight.shape[0],
        )


class UnitTiming(NamedTuple):
    """Seconds of one unit's calls at one token: as kernels (with ``configs``) and as the modules."""

    kernel: float
    modules: float
    configs: tuple[KernelConfig, ...]


@functools.cache
def gemv_choice(device: torch.device, dtype: torch.dtype, shape: LayerShape) -> frozenset[str]:
    """Which of a layer's :data:`UNITS` run as :func:`~ume_plugins.engine.gemv.decode_linear` on ``device``.

    A kernel that fails to build or disagrees with the modules is not used, with one warning; on
    CUDA a unit is also left to the modules where they are faster than its tuned kernels.
    """
    if not triton_available(device):
        return frozenset()
    if device.type != "cuda":
        return frozenset(UNITS) if _kernel_agrees(shape, dtype, device) else frozenset()
    try:
        timings = unit_timings(device, dtype, shape)
    except Exception as error:  # noqa: BLE001 - a capture or timing failure means: use the modules
        logger.warning("The GEMV kernel could not be tuned here (%s); not using it", error)
        return frozenset()
    faster = frozenset(name for name, timing in timings.items() if timing.kernel < timing.modules)
    logger.info("GEMV kernels faster than the modules here: %s", ", ".join(sorted(faster)) or "none")
    return faster


@functools.cache
def unit_timings(device: torch.device, dtype: torch.dtype, shape: LayerShape) -> dict[str, UnitTiming]:
    """Per unit, its tuned kernels' seconds and the modules', on CUDA (tuned once; see :func:`tune`)."""
    return tune(device, dtype, shape, graph_seconds)


def tune(device: torch.device, dtype: torch.dtype, shape: LayerShape, timer: Timer) -> dict[str, UnitTiming]:
    """Time every candidate configuration of each unit's calls, keep the fastest, and time the modules.

    A candidate that fails to build or disagrees with the modules is dropped; a call left with none
    makes its unit's kernel time infinite (with one warning). Every call's fastest configuration is
    recorded with :func:`~ume_plugins.engine.gemv.use_config`.

    Args:
        device: Where to tune.
        dtype: The weights' dtype.
        shape: The layer's projection sizes.
        timer: Seconds per call of each named run, given how many times to repeat it (see
            :func:`graph_seconds`).

    Returns:
        Per unit of :data:`UNITS`, its timing.
    """
    timings = {}
    for name, calls in _unit_cases(shape, dtype, device).items():
        kernel = modules = 0.0
        configs = []
        for call in calls:
            (n, k), gated = call["weight"].shape, call.get("up") is not None
            copies = cold_copies(call, device)
            candidates = candidate_configs(n, k, multiprocessors(device))
            agreeing = [config for config in candidates if _config_agrees(config, call, dtype)]
            if not agreeing:
                logger.warning("The GEMV kernel disagrees with the modules here (%s); not using it", name)
                kernel = math.inf
                break
            runs = timed_runs(agreeing, copies)
            seconds = timer(runs, graph_repeats(copies))
            best = min((config for config in runs if config != "modules"), key=seconds.__getitem__)
            use_config(n, k, gated, dtype, device, best)
            kernel += seconds[best] / len(copies)
            modules += seconds["modules"] / len(copies)
            configs.append(best)
        timings[name] = UnitTiming(kernel, modules, tuple(configs))
    return timings


def candidate_configs(n: int, k: int, processors: int) -> list[KernelConfig]:
    """The configurations tried for an ``n x k`` weight: the default on ``processors`` multiprocessors and neighbours.

    The neighbours have half or twice the outputs per program (twice also with half the columns, the
    same tile in another shape), or eight warps; the default and half its outputs are also tried
    with the column loop pipelined (``_PIPELINED_STAGES``).
    """
    base = default_config(n, k, processors)
    block_n, block_k, warps, _ = base
    half = max(2, block_n // 2)
    options = [
        base,
        KernelConfig(half, block_k, warps),
        KernelConfig(block_n * 2, block_k, warps),
        KernelConfig(block_n, block_k, 8),
    ]
    if block_k >= 512:  # narrower loads than 256 columns (512 bytes of bf16) a row are not worth a try
        options.append(KernelConfig(block_n * 2, block_k // 2, warps))
    options += [
        KernelConfig(block_n, block_k, warps, _PIPELINED_STAGES),
        KernelConfig(half, block_k, warps, _PIPELINED_STAGES),
    ]
    return list(dict.fromkeys(options))


def timed_runs(configs: list[KernelConfig], copies: list[dict]) -> dict[Hashable, Callable[[], None]]:
    """What a timer runs: one pass over ``copies`` per configuration, and one as the modules (``"modules"``)."""
    runs: dict[Hashable, Callable[[], None]] = {
        config: functools.partial(_each, functools.partial(gemv.linear_with, config), copies) for config in configs
    }
    runs["modules"] = functools.partial(_each, reference_linear, copies)
    return runs


def graph_repeats(copies: list[dict]) -> int:
    """Passes over ``copies`` a timed graph captures: enough for ``_CALLS_PER_GRAPH`` calls."""
    return max(1, math.ceil(_CALLS_PER_GRAPH / len(copies)))


def graph_seconds(runs: dict[Hashable, Callable[[], None]], repeats: int, rounds: int = 3) -> dict[Hashable, float]:
    """Seconds of each run, each captured ``repeats`` times in a CUDA graph; replays alternated, best of ``rounds``."""
    graphs = {}
    # The engine's capture stream: its graphs of this thread are all freed by now (one call at a time).
    stream = capture_stream(torch.device("cuda"))
    for key, run in runs.items():
        run()  # builds the kernel (or cuBLAS's handle) outside the capture
        torch.cuda.synchronize()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, stream=stream):
            for _ in range(repeats):
                run()
        graphs[key] = graph
    best = dict.fromkeys(graphs, math.inf)
    for _ in range(rounds):
        for key, graph in graphs.items():
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            graph.replay()
            end.record()
            end.synchronize()
            best[key] = min(best[key], start.elapsed_time(end) / 1e3 / repeats)
    return best


def cold_copies(call: dict, device: torch.device) -> list[dict]:
    """``call``, and copies of it with their own weights, together at least twice the L2 cache (CUDA)."""
    weights = [name for name in ("weight", "up") if call.get(name) is not None]
    size = sum(call[name].numel() * call[name].element_size() for name in weights)
    cache = torch.cuda.get_device_properties(device).L2_cache_size if device.type == "cuda" else 0
    count = min(_MAX_COPIES, max(1, math.ceil(_COLD_FACTOR * cache / size)))
    return [call] + [{**call, **{name: call[name].clone() for name in weights}} for _ in range(count - 1)]


def _config_agrees(config: KernelConfig, call: dict, dtype: torch.dtype) -> bool:
    try:
        return agrees(gemv.linear_with(config, **call), reference_linear(**call), dtype)
    except Exception as error:  # noqa: BLE001 - a configuration that does not build is not a candidate
        logger.debug("GEMV configuration %s does not run here: %s", config, error)
        return False


def _kernel_agrees(shape: LayerShape, dtype: torch.dtype, device: torch.device) -> bool:
    """Whether every unit's kernel builds and agrees with the modules (its random weights freed on return)."""
    try:
        for name, calls in _unit_cases(shape, dtype, device).items():
            for call in calls:
                if not agrees(decode_linear(**call), reference_linear(**call), dtype):
                    logger.warning("The GEMV kernel disagrees with the modules here (%s); not using it", name)
                    return False
    except Exception as error:  # noqa: BLE001 - any build or launch failure means: use the modules
        logger.warning("The GEMV kernel does not run here (%s); not using it", error)
        return False
    return True


def _unit_cases(shape: LayerShape, dtype: torch.dtype, device: torch.device) -> dict[str, list[dict]]:
    """The :func:`~ume_plugins.engine.gemv.decode_linear` calls of each unit, on random weights of ``shape``."""
    generator = torch.Generator(device).manual_seed(0)

    def rand(*size: int, scale: float = 1.0) -> torch.Tensor:
        return (torch.randn(*size, generator=generator, device=device) * scale).to(dtype)

    hidden, width, inner = shape.hidden, shape.attention_width, shape.intermediate
    row, norm = rand(1, hidden), 1 + rand(hidden, scale=0.1)
    return {
        "qkv": [
            {
                "x": row, "weight": rand(shape.qkv_out, hidden, scale=hidden**-0.5),
                "bias": rand(shape.qkv_out) if shape.qkv_bias else None, "norm": norm, "eps": 1e-6,
            }
        ],
        "output": [{"x": rand(1, width), "weight": rand(hidden, width, scale=width**-0.5), "residual": row}],
        "mlp": [
            {
                "x": row, "weight": rand(inner, hidden, scale=hidden**-0.5),
                "up": rand(inner, hidden, scale=hidden**-0.5), "norm": norm, "eps": 1e-6,
            },
            {"x": rand(1, inner), "weight": rand(hidden, inner, scale=inner**-0.5), "residual": row},
        ],
    }  # fmt: skip


def _each(op: Callable[..., torch.Tensor], calls: list[dict]) -> None:
    for call in calls:
        op(**call)
