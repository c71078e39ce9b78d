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
:mod:`ume_plugins.engine.gemv_kernels`, imported on first use. Its block sizes are a heuristic
(:func:`default_config`) until :mod:`ume_plugins.engine.gemv_tuning` times a few candidates on the
device and records the fastest (:func:`use_config`); that module also decides whether the engine
takes the kernel at all.
"""

from __future__ import annotations

import contextlib
import functools
from typing import NamedTuple

import torch

from ume_plugins.engine import dependent_launch
from ume_plugins.engine.attention import next_power_of_2
from ume_plugins.engine.capture import indexed


class KernelConfig(NamedTuple):
    """How :func:`decode_linear` launches: outputs and input columns per program step, warps, and stages.

    ``stages`` above 1 has Triton pipeline the loop over the columns: the loads of ``stages - 1`` steps
    are in flight while one is summed, instead of one step's at a time.
    """

    block_n: int
    block_k: int
    warps: int
    stages: int = 1


# How far the kernel's results may lie from the modules' (relative to the largest, at least 1): its
# float32 sums run in another order than cuBLAS's.
_TOLERANCE = {torch.float32: 1e-4, torch.bfloat16: 2e-2, torch.float16: 2e-3}


def agrees(out: torch.Tensor, expected: torch.Tensor, dtype: torch.dtype) -> bool:
    """Whether a kernel's ``out`` lies as close to the modules' ``expected`` as its sums' order allows in ``dtype``."""
    error = (out.float() - expected.float()).abs().max().item()
    return error <= _TOLERANCE[dtype] * max(1.0, expected.float().abs().max().item())


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
    caller checks :func:`~ume_plugins.engine.attention.triton_available` first.

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
    n, k = weight.shape
    config = launch_config(n, k, up is not None, x.dtype, x.device)
    return linear_with(config, x, weight, bias, norm, eps, up, residual)


@decode_linear.register_fake
def _(x, weight, bias=None, norm=None, eps=0.0, up=None, residual=None):
    return x.new_empty(x.shape[0], weight.shape[0])


def linear_with(
    config: KernelConfig,
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    norm: torch.Tensor | None = None,
    eps: float = 0.0,
    up: torch.Tensor | None = None,
    residual: torch.Tensor | None = None,
    *,
    dependent: bool | None = None,
) -> torch.Tensor:
    """What :func:`decode_linear` computes, launched with ``config`` (the op's body; tuning calls it directly).

    ``dependent``: launch with programmatic dependent launch (see
    :mod:`~ume_plugins.engine.dependent_launch`); None: where that module says it is enabled.
    """
    if x.shape[0] != 1:
        raise ValueError(f"decode_linear takes one token's row, not {x.shape[0]}")
    if up is not None and bias is not None:
        raise ValueError("decode_linear has no bias for a gated projection")
    n, k = weight.shape
    x, weight = x.contiguous(), weight.contiguous()
    out = torch.empty(1, n, dtype=x.dtype, device=x.device)
    block_n, block_k, warps, stages = config
    if dependent is None:
        dependent = dependent_launch.enabled(x.device)
    # Unused pointers get any tensor: their loads are compiled out by the constexpr flags.
    guard = torch.cuda.device(x.device) if x.is_cuda else contextlib.nullcontext()
    with guard:
        _kernel()[(_cdiv(n, block_n),)](
            x, weight, up if up is not None else weight, bias if bias is not None else x,
            norm if norm is not None else x, residual.contiguous() if residual is not None else x, out, n, k, eps,
            NORM=norm is not None, GATED=up is not None, BIAS=bias is not None, RESIDUAL=residual is not None,
            BLOCK_N=block_n, BLOCK_K=block_k, STAGES=stages, LINE=line_values(x.dtype), PDL=dependent,
            INTERPRETED=not x.is_cuda, num_warps=warps, launch_pdl=dependent,
        )  # fmt: skip
    return out


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


# Configurations the tuning found fastest, by (n, k, gated, dtype, device); the rest take the default.
_tuned: dict[tuple, KernelConfig] = {}


def launch_config(n: int, k: int, gated: bool, dtype: torch.dtype, device: torch.device) -> KernelConfig:
    """The configuration :func:`decode_linear` launches an ``n x k`` weight with: the tuned one, else the default."""
    return _tuned.get((n, k, gated, dtype, indexed(device))) or default_config(n, k, multiprocessors(device))


def use_config(n: int, k: int, gated: bool, dtype: torch.dtype, device: torch.device, config: KernelConfig) -> None:
    """Launch ``n x k`` weights of ``dtype`` on ``device`` with ``config`` from now on (set before any capture)."""
    _tuned[(n, k, gated, dtype, indexed(device))] = config


def line_values(dtype: torch.dtype) -> int:
    """Values of ``dtype`` in a 128-byte cache line: what the kernels' L2 prefetch requests one at a time."""
    return 128 // dtype.itemsize


def multiprocessors(device: torch.device) -> int:
    """Streaming multiprocessors on ``device`` (1 off CUDA): what the launch configurations are sized for."""
    return torch.cuda.get_device_properties(device).multi_processor_count if device.type == "cuda" else 1


@functools.cache
def default_config(n: int, k: int, processors: int) -> KernelConfig:
    """The heuristic configuration for an ``n x k`` weight on ``processors`` multiprocessors, before tuning.

    ``BLOCK_K`` is a power of two of at least 512 dividing ``k`` where there is one (no masked lanes),
    else 1024 (or ``k`` rounded up, if smaller); ``BLOCK_N`` makes a tile of ``_TILE_ELEMENTS``, halved
    (to 2 at least) until every multiprocessor gets ``_PROGRAMS_PER_SM`` programs.
    """
    divisor = k & -k
    block_k = divisor if divisor >= 512 else min(1024, next_power_of_2(k))
    block_n = max(2, _TILE_ELEMENTS // block_k)
    while block_n > 2 and _cdiv(n, block_n) < _PROGRAMS_PER_SM * processors:
        block_n //= 2
    return KernelConfig(block_n, block_k, 4)


@functools.cache
def _kernel():
    # Imported on first use: without Triton this module still imports.
    from ume_plugins.engine.gemv_kernels import linear_kernel

    return linear_kernel
