"""One token's linear layers as single GEMV kernels, each with the small operations around it fused.

At one slot a decoder layer's projections are matrix-vector products, and cuBLAS runs them well
below the memory bandwidth while the RMS norms, the gated activation and the residual additions
around them are kernels of their own (profiled on an H200: the gate/up and down GEMVs at 64-68% of
copy bandwidth, the output projection at 18%). :func:`decode_linear` reads the weight once in one
kernel and does the rest on the way in or out:

- ``norm``: the input row goes through the layer's RMS norm first (each program recomputes the
  statistics of the one row, which is cheaper than a kernel of its own);
- ``up``: a second weight read alongside the first, giving ``silu(x @ weight.T) * (x @ up.T)``,
  the gated MLP's input to its down projection;
- ``bias`` and ``residual``: added before the output is written.

Values are rounded to the model's dtype wherever the modules round them, so the result is the
modules' up to the order of the float32 sums. The kernel lives in
:mod:`ume_plugins.engine.gemv_kernels`, imported on first use. Whether the engine takes it on a
device is decided once per process and decoder shape by :func:`gemv_usable`: it must agree with
the modules there and be faster than them.
"""

from __future__ import annotations

import contextlib
import functools
import logging
from typing import NamedTuple

import torch

from ume_plugins.engine.attention import next_power_of_2, triton_available

logger = logging.getLogger(__name__)

# Weight elements one program loads per loop step and weight (8 KB of bf16). A GEMV is bound by the
# bytes in flight per multiprocessor (bandwidth x latency, ~20 KB on an H100): a few programs this
# size resident at once reach it, with 32 float32 products a thread to hold per weight.
_TILE_ELEMENTS = 4096
# At least this many programs per multiprocessor, so that every one has work.
_PROGRAMS_PER_SM = 2


@torch.library.custom_op("ume_plugins::decode_linear", mutates_args=())
def decode_linear(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    norm: torch.Tensor | None = None,
    eps: float = 0.0,
    up: torch.Tensor | None = None,
    residual: torch.Tensor | None = None,
) -> torch.Tensor:
    """``residual + f(rms_norm(x) @ weight.T + bias)`` for one token, in one kernel.

    Each of ``norm``, ``up``, ``bias`` and ``residual`` is optional (see the module docstring); the
    caller checks :func:`triton_available` first.

    Args:
        x: ``[1, in_features]`` the token's row.
        weight: ``[out_features, in_features]`` contiguous (a ``torch.nn.Linear`` weight).
        bias: ``[out_features]`` or None.
        norm: ``[in_features]`` the RMS norm's weight, or None for no norm.
        eps: The RMS norm's epsilon.
        up: The gated MLP's up projection, shaped like ``weight``; None: no gate.
        residual: ``[1, out_features]`` added to the result, or None.

    Returns:
        ``[1, out_features]`` in ``x``'s dtype.
    """
    if x.shape[0] != 1:
        raise ValueError(f"decode_linear takes one token's row, not {x.shape[0]}")
    if up is not None and bias is not None:
        raise ValueError("decode_linear has no bias for a gated projection")
    n, k = weight.shape
    x, weight = x.contiguous(), weight.contiguous()
    out = torch.empty(1, n, dtype=x.dtype, device=x.device)
    block_n, block_k, warps = _config(n, k, up is not None, x.device)
    # Unused pointers get any tensor: their loads are compiled out by the constexpr flags.
    guard = torch.cuda.device(x.device) if x.is_cuda else contextlib.nullcontext()
    with guard:
        _kernel()[(_cdiv(n, block_n),)](
            x, weight, up if up is not None else weight, bias if bias is not None else x,
            norm if norm is not None else x, residual.contiguous() if residual is not None else x, out, n, k, eps,
            NORM=norm is not None, GATED=up is not None, BIAS=bias is not None, RESIDUAL=residual is not None,
            BLOCK_N=block_n, BLOCK_K=block_k, INTERPRETED=not x.is_cuda, num_warps=warps,
        )  # fmt: skip
    return out


@decode_linear.register_fake
def _(x, weight, bias=None, norm=None, eps=0.0, up=None, residual=None):
    return x.new_empty(x.shape[0], weight.shape[0])


def reference_linear(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    norm: torch.Tensor | None = None,
    eps: float = 0.0,
    up: torch.Tensor | None = None,
    residual: torch.Tensor | None = None,
) -> torch.Tensor:
    """What :func:`decode_linear` computes, as the modules compute it (torch operations)."""
    if norm is not None:
        x = norm * torch.nn.functional.rms_norm(x, norm.shape, eps=eps)
    result = torch.nn.functional.linear(x, weight, bias)
    if up is not None:
        result = torch.nn.functional.silu(result) * torch.nn.functional.linear(x, up)
    return result if residual is None else residual + result


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


@functools.cache
def _config(n: int, k: int, gated: bool, device: torch.device) -> tuple[int, int, int]:
    """``(BLOCK_N, BLOCK_K, num_warps)`` for an ``n x k`` weight (a first guess: ``gpu.py --gemv-sweep`` tunes it).

    ``BLOCK_K`` is a power of two of at least 512 dividing ``k`` where there is one (no masked lanes),
    else 1024 (or ``k`` rounded up, if smaller); ``BLOCK_N`` makes a tile of ``_TILE_ELEMENTS``, halved
    (to 2 at least) until every multiprocessor gets ``_PROGRAMS_PER_SM`` programs.
    """
    divisor = k & -k
    block_k = divisor if divisor >= 512 else min(1024, next_power_of_2(k))
    block_n = max(2, _TILE_ELEMENTS // block_k)
    processors = torch.cuda.get_device_properties(device).multi_processor_count if device.type == "cuda" else 1
    while block_n > 2 and _cdiv(n, block_n) < _PROGRAMS_PER_SM * processors:
        block_n //= 2
    return block_n, block_k, 4


@functools.cache
def _kernel():
    # Imported on first use: without Triton this module still imports.
    from ume_plugins.engine.gemv_kernels import linear_kernel

    return linear_kernel


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


# The three places a layer can take the kernel: the fused query/key/value projection after the input
# norm, the output projection with its residual, and the gated MLP (after its norm) with its down
# projection and residual.
UNITS = ("qkv", "output", "mlp")


@functools.cache
def gemv_choice(device: torch.device, dtype: torch.dtype, shape: LayerShape) -> frozenset[str]:
    """Which of a layer's :data:`UNITS` run faster as :func:`decode_linear` on ``device`` (checked once).

    Each unit is checked on random weights of the layer's shape: the kernel must build, agree with
    :func:`reference_linear` and, on CUDA, beat it, both timed as replayed CUDA graphs (the way the
    engine runs a step). A kernel that fails to build or disagrees is not used, with one warning.
    """
    if not triton_available(device):
        return frozenset()
    if not _kernel_agrees(shape, dtype, device):
        return frozenset()
    if device.type != "cuda":
        return frozenset(UNITS)
    try:
        seconds = unit_seconds(device, dtype, shape)
    except Exception as error:  # noqa: BLE001 - a capture or timing failure means: use the modules
        logger.warning("The GEMV kernel could not be timed here (%s); not using it", error)
        return frozenset()
    faster = frozenset(name for name, (kernel, modules) in seconds.items() if kernel < modules)
    logger.info("GEMV kernels faster than the modules here: %s", ", ".join(sorted(faster)) or "none")
    return faster


@functools.cache
def unit_seconds(device: torch.device, dtype: torch.dtype, shape: LayerShape) -> dict[str, tuple[float, float]]:
    """Per unit, seconds of the kernel and of the modules' operations at one token, on CUDA.

    Both are replayed from CUDA graphs (the way the engine runs a step), alternately, best of three.
    """
    seconds = {}
    for name, calls in _unit_cases(shape, dtype, device).items():
        kernel, modules = _graph_seconds(
            [functools.partial(_each, op, calls) for op in (decode_linear, reference_linear)]
        )
        seconds[name] = (kernel, modules)
    return seconds


def _kernel_agrees(shape: LayerShape, dtype: torch.dtype, device: torch.device) -> bool:
    """Whether every unit's kernel builds and agrees with the modules (its random weights freed on return)."""
    try:
        for name, calls in _unit_cases(shape, dtype, device).items():
            for call in calls:
                expected = reference_linear(**call).float()
                error = (decode_linear(**call).float() - expected).abs().max().item()
                if not error <= _TOLERANCE[dtype] * max(1.0, expected.abs().max().item()):
                    logger.warning("The GEMV kernel disagrees with the modules here (%s); not using it", name)
                    return False
    except Exception as error:  # noqa: BLE001 - any build or launch failure means: use the modules
        logger.warning("The GEMV kernel does not run here (%s); not using it", error)
        return False
    return True


_TOLERANCE = {torch.float32: 1e-4, torch.bfloat16: 2e-2, torch.float16: 2e-3}


def _unit_cases(shape: LayerShape, dtype: torch.dtype, device: torch.device) -> dict[str, list[dict]]:
    """The :func:`decode_linear` calls of each unit, on random weights of ``shape``."""
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


def _each(op, calls: list[dict]) -> None:
    for call in calls:
        op(**call)


def _graph_seconds(runs: list, repeats: int = 20, rounds: int = 3) -> list[float]:
    """Seconds per call of each of ``runs``, each captured ``repeats`` times in a CUDA graph, replays alternated."""
    graphs = []
    # A stream of its own: destroying a graph frees its capture stream's cuBLAS workspace, which
    # other graphs captured on that stream may still use (see slot_state.StepRunner).
    stream = torch.cuda.Stream()
    for run in runs:
        run()  # builds the kernel (or cuBLAS's handle) outside the capture
        torch.cuda.synchronize()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, stream=stream):
            for _ in range(repeats):
                run()
        graphs.append(graph)
    best = [float("inf")] * len(graphs)
    for _ in range(rounds):
        for index, graph in enumerate(graphs):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            graph.replay()
            end.record()
            end.synchronize()
            best[index] = min(best[index], start.elapsed_time(end) / 1e3 / repeats)
    return best
