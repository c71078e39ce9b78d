"""Decode-time attention over the slot KV cache whose cost follows each slot's live length.

One query token per slot attends to positions ``0..visible - 1`` of a ``[slots, kv_heads,
capacity, head_dim]`` cache (split-KV, "flash-decoding"):

1. ``split_kernel`` runs one program per (slot, key/value head, chunk of positions). It reads
   the chunk's keys and values only below the slot's length, so a short slot costs little in a
   long cache, and writes the chunk's normalised output and log-sum-exp (a chunk at or past the
   length writes ``-inf`` and loads nothing);
2. ``combine_kernel`` merges a row's live chunks, weighting each by its share of the softmax.

Scores, softmax and accumulation are float32; as in flash attention the probabilities meet the
values in the cache's dtype, and the output is rounded once. Every size is static and nothing
reads back to the host, so the op can be captured in a CUDA graph; to ``torch.compile`` it is one
opaque custom op. The kernels live in :mod:`ume_plugins.engine.attention_kernels`, imported on
first use: without Triton this module imports and :func:`triton_available` says ``False``.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import logging
import math
import os

import torch

from ume_plugins.engine import dependent_launch

logger = logging.getLogger(__name__)

# Positions one program step reads; also the smallest chunk. 64 keeps the key and value tiles
# (64 x 128 bf16) in registers and is a legal ``tl.dot`` size.
_BLOCK_N = 64
# About this many programs fill a GPU several times over; more only add programs whose chunks lie
# past the lengths (64 slots, capacity 3200, length 32 on an H200: 23 us with 64 chunks a row, 9 with 8).
_TARGET_PROGRAMS = 1024
# At most this many chunks per row, so the combine reads all of them in one tile.
_MAX_SPLITS = 64


def triton_available(device: torch.device) -> bool:
    """Whether the Triton decode kernel can run for tensors on ``device``.

    True for a CUDA device of compute capability 8.0 or newer (bf16 ``tl.dot``) when Triton
    imports, and for the CPU when Triton's interpreter is on (``TRITON_INTERPRET=1``, as tests do).
    """
    if importlib.util.find_spec("triton") is None:
        return False
    if device.type == "cuda":
        return torch.cuda.is_available() and torch.cuda.get_device_capability(device) >= (8, 0)
    return device.type == "cpu" and os.environ.get("TRITON_INTERPRET") == "1"


def _split_length(capacity: int, rows: int) -> int:
    """Positions per chunk (whole blocks): about ``_TARGET_PROGRAMS`` programs for ``rows`` (slot, head) rows."""
    splits = min(_MAX_SPLITS, max(1, _TARGET_PROGRAMS // rows))
    return _BLOCK_N * math.ceil(capacity / (_BLOCK_N * splits))


@torch.library.custom_op("ume_plugins::decode_attention", mutates_args=())
def decode_attention(
    query: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, visible: torch.Tensor, scale: float
) -> torch.Tensor:
    """Attention of one query token per slot to the first ``visible`` positions of its cache.

    The caller checks :func:`triton_available` first.

    Args:
        query: ``[slots, kv_heads, group, head_dim]`` query heads grouped under their key/value head.
        keys: ``[slots, kv_heads, capacity, head_dim]`` the key cache.
        values: The value cache, shaped like ``keys``.
        visible: ``[slots]`` int64, positions ``0..visible - 1`` attended (at least 1).
        scale: Factor applied to the scores before the softmax.

    Returns:
        ``[slots, kv_heads, group, head_dim]`` attention output in the query's dtype.
    """
    slots, kv_heads, group, head_dim = query.shape
    if not _tileable(head_dim):
        raise ValueError(f"head_dim must be a power of two >= 16 (tl.arange, tl.dot), not {head_dim}")
    split_kernel, combine_kernel = _kernels()
    capacity = keys.shape[2]
    rows = slots * kv_heads
    chunk = _split_length(capacity, rows)
    splits = math.ceil(capacity / chunk)
    partial = torch.empty(rows, splits, group, head_dim, dtype=torch.float32, device=query.device)
    lse = torch.empty(rows, splits, group, dtype=torch.float32, device=query.device)
    out = torch.empty_like(query)
    sizes = (kv_heads, group, capacity, chunk, splits)
    guard = torch.cuda.device(query.device) if query.is_cuda else contextlib.nullcontext()
    dependent = dependent_launch.enabled(query.device)
    # Two stages measured fastest on an H200 (Triton's default three hold more shared memory per program).
    with guard:
        split_kernel[(rows, splits)](
            query, keys, values, visible, partial, lse,
            *query.stride(), *keys.stride(), *values.stride(), *sizes, scale * math.log2(math.e),
            GROUP_BLOCK=max(16, next_power_of_2(group)), HEAD_DIM=head_dim, BLOCK_N=_BLOCK_N,
            PDL=dependent, INTERPRETED=not query.is_cuda, num_warps=4, num_stages=2, launch_pdl=dependent,
        )  # fmt: skip
        combine_kernel[(rows, group)](
            partial, lse, visible, out, *out.stride(), *sizes,
            SPLITS_BLOCK=next_power_of_2(splits), HEAD_DIM=head_dim, PDL=dependent, launch_pdl=dependent,
        )  # fmt: skip
    return out


@decode_attention.register_fake
def _(query: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, visible: torch.Tensor, scale: float):
    return torch.empty_like(query)


@functools.cache
def _kernels() -> tuple:
    # Imported on first use: without Triton this module still imports.
    from ume_plugins.engine import attention_kernels

    return attention_kernels.split_kernel, attention_kernels.combine_kernel


def next_power_of_2(n: int) -> int:
    """The smallest power of two >= ``n`` (a Triton block size)."""
    return 1 << max(0, n - 1).bit_length()


def _tileable(head_dim: int) -> bool:
    return head_dim >= 16 and not head_dim & (head_dim - 1)


def additive_mask(write: torch.Tensor, capacity: int, dtype: torch.dtype) -> torch.Tensor:
    """SDPA's mask for the same attention: ``[slots, 1, 1, capacity]``, 0 on positions ``0..write``, -inf past.

    The step builds it once per step: SDPA would convert a boolean mask in every layer.
    """
    visible = torch.arange(capacity, device=write.device)[None] <= write[:, None]
    mask = torch.full(visible.shape, -torch.inf, dtype=dtype, device=write.device).masked_fill_(visible, 0.0)
    return mask.view(len(write), 1, 1, capacity)


@functools.cache
def kernel_usable(device: torch.device, dtype: torch.dtype, group: int, head_dim: int) -> bool:
    """Whether the kernel runs on ``device`` for this head layout and agrees with SDPA there.

    Checked once per process and layout on a small random case (compiling the kernel); a kernel
    that fails to build or disagrees is not used, with one warning, and SDPA attends instead.
    """
    if not triton_available(device) or not _tileable(head_dim):
        return False
    generator = torch.Generator().manual_seed(0)
    query = torch.randn(2, 2, group, head_dim, generator=generator)
    keys, values = (torch.randn(2, 2, 200, head_dim, generator=generator) for _ in range(2))
    visible = torch.tensor([1, 150])
    mask = additive_mask(visible - 1, 200, torch.float32)
    expected = torch.nn.functional.scaled_dot_product_attention(query, keys, values, attn_mask=mask, scale=0.1)
    try:
        moved = [tensor.to(device, dtype) for tensor in (query, keys, values)]
        out = decode_attention(*moved, visible.to(device), 0.1).float().cpu()
    except Exception as error:  # noqa: BLE001 - any build or launch failure means: use SDPA
        logger.warning("The decode attention kernel does not run here (%s); using SDPA", error)
        return False
    tolerance = 1e-4 if dtype == torch.float32 else 3e-2
    if not torch.allclose(out, expected, atol=tolerance, rtol=0):
        logger.warning("The decode attention kernel disagrees with SDPA here; using SDPA")
        return False
    return True
