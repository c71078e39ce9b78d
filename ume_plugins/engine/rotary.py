"""The step's rotary embedding and KV-cache write as one kernel, for a step that is not compiled.

Per layer the step rotates the new token's query and key heads (M-RoPE: ``x * cos + roll(x, half)
* signed_sin``) and writes the key and value heads into each slot's cache at its own position. As
torch operations that is six small kernels a layer (profiled on an H200: ~11 us of a 2.2 ms batch-1
step each layer, as much as its attention); :func:`rotate_and_cache` does it in one, rounding as
those operations round, so results are the same bits. Under ``torch.compile`` the step keeps the
torch operations: inductor fuses them into one kernel itself. The kernel lives in
:mod:`ume_plugins.engine.rotary_kernels`, imported on first use.
"""

from __future__ import annotations

import contextlib
import functools
import logging

import torch

from ume_plugins.engine.attention import triton_available

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


@functools.cache
def _kernel():
    # Imported on first use: without Triton this module still imports.
    from ume_plugins.engine.rotary_kernels import rotate_kernel

    return rotate_kernel
