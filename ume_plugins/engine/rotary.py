"""The step's rotary embedding and KV-cache write as one kernel, for a step that is not compiled.

Per layer the step rotates the new token's query and key heads (M-RoPE: ``x * cos + roll(x, half)
* signed_sin``) and writes the key and value heads into each slot's cache at its own position. As
torch operations that is six small kernels a layer (profiled on an H200: ~11 us of a 2.2 ms batch-1
step each layer, as much as its attention); :func:`rotate_and_cache` does it in one, rounding as
those operations round, so results are the same bits. Under ``torch.compile`` the step keeps the
torch operations: inductor fuses them into one kernel itself. The kernel lives in
:mod:`ume_plugins.engine.rotary_kernels`, imported on first use.

At one slot, where the step also runs the layer's input norm and query/key/value projection as a
GEMV kernel (:mod:`ume_plugins.engine.gemv`), :func:`project_rotate_and_cache` does the projection,
the rotation and the cache write in that one kernel: each of its programs computes pairs of outputs
half a head apart, the two values the rotation mixes.
"""

from __future__ import annotations

import contextlib
import functools
import logging

import torch

from ume_plugins.engine import dependent_launch
from ume_plugins.engine.attention import triton_available
from ume_plugins.engine.gemv import agrees, launch_config, line_values, reference_linear

logger = logging.getLogger(__name__)


@torch.library.custom_op("ume_plugins::rotate_and_cache", mutates_args=("keys", "values"))
def rotate_and_cache(
    query_and_key: torch.Tensor,
    value: torch.Tensor,
    cos: torch.Tensor,
    signed_sin: torch.Tensor,
    keys: torch.Tensor,
    values: torch.Tensor,
    write: torch.Tensor,
) -> torch.Tensor:
    """Rotate the query and key heads, write keys and values at ``write``; return the rotated queries.

    The caller checks :func:`rotary_usable` first.

    Args:
        query_and_key: ``[slots, heads + kv_heads, head_dim]`` the new token's query heads, then its key heads.
        value: ``[slots, kv_heads, head_dim]`` its value heads.
        cos: ``[slots, head_dim]`` the rotation's cosines at each slot's position.
        signed_sin: ``[slots, head_dim]`` its sines, the first half negated (``rotate_half`` folded in).
        keys: ``[slots, kv_heads, capacity, head_dim]`` the key cache, written in place.
        values: The value cache, likewise.
        write: ``[slots]`` int64, the position each slot writes.

    Returns:
        ``[slots, heads, head_dim]`` the rotated query heads.
    """
    slots, both, head_dim = query_and_key.shape
    kv_heads = value.shape[1]
    heads = both - kv_heads
    if head_dim & (head_dim - 1) or head_dim % 2:
        raise ValueError(f"head_dim must be an even power of two (tl.arange), not {head_dim}")
    query = torch.empty(slots, heads, head_dim, dtype=query_and_key.dtype, device=query_and_key.device)
    guard = torch.cuda.device(query.device) if query.is_cuda else contextlib.nullcontext()
    # No fused multiply-add: in float32 it would skip the rounding of each product that torch does.
    with guard:
        _kernel()[(slots, heads + 2 * kv_heads)](
            query_and_key, value, cos, signed_sin, keys, values, write, query,
            *query_and_key.stride(), *value.stride(), *cos.stride(), *signed_sin.stride(),
            *keys.stride(), *values.stride(), heads, kv_heads,
            HEAD_DIM=head_dim, INTERPRETED=not query.is_cuda, enable_fp_fusion=False,
        )  # fmt: skip
    return query


@rotate_and_cache.register_fake
def _(query_and_key, value, cos, signed_sin, keys, values, write):
    slots, both, head_dim = query_and_key.shape
    return query_and_key.new_empty(slots, both - value.shape[1], head_dim)


def reference_rotate_and_cache(
    query_and_key: torch.Tensor,
    value: torch.Tensor,
    cos: torch.Tensor,
    signed_sin: torch.Tensor,
    keys: torch.Tensor,
    values: torch.Tensor,
    write: torch.Tensor,
) -> torch.Tensor:
    """What :func:`rotate_and_cache` does, as torch operations (what a compiled step runs)."""
    half = query_and_key.shape[-1] // 2
    rotated = query_and_key * cos[:, None] + torch.roll(query_and_key, half, dims=-1) * signed_sin[:, None]
    heads = rotated.shape[1] - value.shape[1]
    rows = torch.arange(len(write), device=write.device)
    keys[rows, :, write] = rotated[:, heads:]
    values[rows, :, write] = value
    return rotated[:, :heads]


@functools.cache
def rotary_usable(device: torch.device, dtype: torch.dtype, head_dim: int) -> bool:
    """Whether the kernel runs on ``device`` for this head size and gives the torch operations' bits.

    Checked once per process on a small random case; a kernel that fails to build or differs is
    not used, with one warning.
    """
    if not triton_available(device) or head_dim < 2 or head_dim & (head_dim - 1):
        return False
    generator = torch.Generator().manual_seed(0)
    slots, heads, kv_heads, capacity = 2, 6, 2, 8
    inputs = [
        torch.randn(slots, heads + kv_heads, head_dim, generator=generator),
        torch.randn(slots, kv_heads, head_dim, generator=generator),
        torch.randn(slots, head_dim, generator=generator),
        torch.randn(slots, head_dim, generator=generator),
        torch.zeros(slots, kv_heads, capacity, head_dim),
        torch.zeros(slots, kv_heads, capacity, head_dim),
    ]
    inputs = [tensor.to(device, dtype) for tensor in inputs] + [torch.tensor([3, 0], device=device)]
    expected_inputs = [tensor.clone() for tensor in inputs]
    try:
        query = rotate_and_cache(*inputs)
    except Exception as error:  # noqa: BLE001 - any build or launch failure means: use the torch operations
        logger.warning("The rotary kernel does not run here (%s); using torch operations", error)
        return False
    expected = reference_rotate_and_cache(*expected_inputs)
    if not (torch.equal(query, expected) and all(map(torch.equal, inputs[4:6], expected_inputs[4:6]))):
        logger.warning("The rotary kernel differs from the torch operations here; using them")
        return False
    return True


@torch.library.custom_op("ume_plugins::project_rotate_and_cache", mutates_args=("keys", "values"))
def project_rotate_and_cache(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    norm: torch.Tensor,
    eps: float,
    cos: torch.Tensor,
    signed_sin: torch.Tensor,
    keys: torch.Tensor,
    values: torch.Tensor,
    write: torch.Tensor,
) -> torch.Tensor:
    """One token's normed query/key/value projection, rotated and cached; returns the rotated queries.

    :func:`~ume_plugins.engine.gemv.decode_linear` (with ``norm``) followed by :func:`rotate_and_cache`,
    in one kernel. The caller checks :func:`projection_rotary_usable` first.

    Args:
        x: ``[1, hidden]`` the token's row, before the layer's input norm.
        weight: ``[(heads + 2 * kv_heads) * head_dim, hidden]`` the query, key and value weights stacked.
        bias: Their biases stacked, or None.
        norm: ``[hidden]`` the input RMS norm's weight.
        eps: Its epsilon.
        cos: ``[1, head_dim]`` the rotation's cosines at the slot's position.
        signed_sin: ``[1, head_dim]`` its sines, the first half negated.
        keys: ``[1, kv_heads, capacity, head_dim]`` the key cache, written in place.
        values: The value cache, likewise.
        write: ``[1]`` int64, the position written.

    Returns:
        ``[1, heads, head_dim]`` the rotated query heads.
    """
    _, kv_heads, _, head_dim = keys.shape
    n, k = weight.shape
    heads = n // head_dim - 2 * kv_heads
    if x.shape[0] != 1 or keys.shape[0] != 1:
        raise ValueError(f"project_rotate_and_cache takes one slot's row, not {x.shape[0]}")
    if head_dim & (head_dim - 1) or head_dim < 2 or heads < 1 or n % head_dim:
        raise ValueError(f"a weight of {n} rows is not query, key and value heads of {head_dim} (a power of two)")
    x, weight = x.contiguous(), weight.contiguous()
    query = torch.empty(1, heads, head_dim, dtype=x.dtype, device=x.device)
    block_n, block_k, warps, stages = launch_config(n, k, False, x.dtype, x.device)
    pairs = projection_pairs(block_n, head_dim)
    dependent = dependent_launch.enabled(x.device)
    guard = torch.cuda.device(x.device) if x.is_cuda else contextlib.nullcontext()
    with guard:
        _projection_kernel()[(n // 2 // pairs,)](
            x, weight, bias if bias is not None else x, norm, cos, signed_sin, keys, values, write, query,
            k, eps, *keys.stride()[1:], *values.stride()[1:], heads, kv_heads,
            PAIRS=pairs, BLOCK_K=block_k, STAGES=stages, HEAD_DIM=head_dim, BIAS=bias is not None,
            LINE=line_values(x.dtype), PDL=dependent, INTERPRETED=not x.is_cuda, num_warps=warps,
            enable_fp_fusion=x.dtype != torch.float32, launch_pdl=dependent,
        )  # fmt: skip
    return query


def projection_pairs(block_n: int, head_dim: int) -> int:
    """Output pairs a program of :func:`project_rotate_and_cache` takes under a GEMV config of ``block_n`` outputs.

    Its tile is then the GEMV's (``2 * pairs`` rows); both are powers of two, so the pairs divide half a head.
    """
    return max(1, min(block_n // 2, head_dim // 2))


@project_rotate_and_cache.register_fake
def _(x, weight, bias, norm, eps, cos, signed_sin, keys, values, write):
    _, kv_heads, _, head_dim = keys.shape
    return x.new_empty(1, weight.shape[0] // head_dim - 2 * kv_heads, head_dim)


def reference_project_rotate_and_cache(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    norm: torch.Tensor,
    eps: float,
    cos: torch.Tensor,
    signed_sin: torch.Tensor,
    keys: torch.Tensor,
    values: torch.Tensor,
    write: torch.Tensor,
) -> torch.Tensor:
    """What :func:`project_rotate_and_cache` does, as the modules and torch operations do it."""
    _, kv_heads, _, head_dim = keys.shape
    projected = reference_linear(x, weight, bias, norm=norm, eps=eps).view(1, -1, head_dim)
    query_and_key, value = projected[:, :-kv_heads], projected[:, -kv_heads:]
    return reference_rotate_and_cache(query_and_key, value, cos, signed_sin, keys, values, write)


@functools.cache
def projection_rotary_usable(
    device: torch.device, dtype: torch.dtype, heads: int, kv_heads: int, head_dim: int
) -> bool:
    """Whether :func:`project_rotate_and_cache` runs on ``device`` and agrees with the modules there.

    Checked once per process on a small random case of this head layout: the queries and the cached
    keys and values must agree as closely as the GEMV kernel does (its sums run in another order than
    cuBLAS's; the rotation's rounding is the torch operations'), and the rest of the cache must stay.
    A kernel that fails to build or disagrees is not used, with one warning.
    """
    if not triton_available(device) or head_dim < 2 or head_dim & (head_dim - 1):
        return False
    generator = torch.Generator().manual_seed(0)
    hidden, n, capacity = 96, (heads + 2 * kv_heads) * head_dim, 8

    def rand(*size: int, scale: float = 1.0) -> torch.Tensor:
        return (torch.randn(*size, generator=generator) * scale).to(device, dtype)

    inputs = [rand(1, hidden), rand(n, hidden, scale=hidden**-0.5), rand(n), 1 + rand(hidden, scale=0.1), 1e-6]
    inputs += [rand(1, head_dim), rand(1, head_dim), rand(1, kv_heads, capacity, head_dim)]
    inputs += [rand(1, kv_heads, capacity, head_dim), torch.tensor([5], device=device)]
    expected_inputs = [value.clone() if isinstance(value, torch.Tensor) else value for value in inputs]
    try:
        query = project_rotate_and_cache(*inputs)
    except Exception as error:  # noqa: BLE001 - any build or launch failure means: two kernels
        logger.warning("The fused projection and rotary kernel does not run here (%s); not using it", error)
        return False
    expected = reference_project_rotate_and_cache(*expected_inputs)
    written = [(inputs[i][:, :, 5], expected_inputs[i][:, :, 5]) for i in (7, 8)]
    kept = [(inputs[i][:, :, :5], expected_inputs[i][:, :, :5]) for i in (7, 8)]
    close = all(agrees(a, b, dtype) for a, b in [(query, expected), *written])
    if not close or not all(torch.equal(a, b) for a, b in kept):
        logger.warning("The fused projection and rotary kernel disagrees with the modules here; not using it")
        return False
    return True


@functools.cache
def _projection_kernel():
    from ume_plugins.engine.rotary_kernels import projection_rotary_kernel

    return projection_rotary_kernel


@functools.cache
def _kernel():
    # Imported on first use: without Triton this module still imports.
    from ume_plugins.engine.rotary_kernels import rotate_kernel

    return rotate_kernel
