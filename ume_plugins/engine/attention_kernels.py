"""The Triton kernels of :mod:`ume_plugins.engine.attention` (imported only where Triton is installed)."""

from __future__ import annotations

import triton
import triton.language as tl

from ume_plugins.engine.gemv_kernels import after_previous_kernel


@triton.jit
def split_kernel(
    query, keys, values, visible, partial, lse,
    sq0, sq1, sq2, sq3, sk0, sk1, sk2, sk3, sv0, sv1, sv2, sv3,
    kv_heads, group, capacity, chunk, splits, scale_log2,
    GROUP_BLOCK: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_N: tl.constexpr, PDL: tl.constexpr,
    INTERPRETED: tl.constexpr,
):  # fmt: skip
    """Each (slot x key/value head, chunk) program: the chunk's normalised output and log-sum-exp (base 2)."""
    if PDL:  # under dependent launch: nothing loaded or stored before the kernel ahead is done
        after_previous_kernel()
    row, split = tl.program_id(0), tl.program_id(1)
    slot, head = row // kv_heads, row % kv_heads
    length = tl.minimum(tl.load(visible + slot).to(tl.int32), capacity)
    start = split * chunk
    stop = tl.minimum(start + chunk, length)
    g, d, n = tl.arange(0, GROUP_BLOCK), tl.arange(0, HEAD_DIM), tl.arange(0, BLOCK_N)
    q_ptrs = query + slot * sq0 + head * sq1 + g[:, None] * sq2 + d[None, :] * sq3
    k_base, v_base = keys + slot * sk0 + head * sk1, values + slot * sv0 + head * sv1
    # Triton's interpreter has no bf16 arithmetic (its dot multiplies the bit patterns): there the
    # operands become float32, which changes nothing (a product of two bf16 is exact in float32).
    dot_type = tl.float32 if INTERPRETED else keys.dtype.element_ty
    top = tl.full([GROUP_BLOCK], float("-inf"), tl.float32)
    total = tl.zeros([GROUP_BLOCK], tl.float32)
    acc = tl.zeros([GROUP_BLOCK, HEAD_DIM], tl.float32)
    for block in range(start, stop, BLOCK_N):
        pos = block + n
        live = pos < stop
        # Loaded in the loop so a chunk past the length loads nothing; mostly a chunk is one block.
        # Group rows padded to 16 (tl.dot's minimum) read as zeros and are never stored.
        q = tl.load(q_ptrs, mask=g[:, None] < group, other=0.0).to(dot_type)
        k = tl.load(k_base + pos[None, :] * sk2 + d[:, None] * sk3, mask=live[None, :], other=0.0).to(dot_type)
        # Base-2 scores: exp2 is the fast exponential; the scale folds in log2(e).
        scores = tl.dot(q, k, input_precision="ieee") * scale_log2
        scores = tl.where(live[None, :], scores, float("-inf"))
        new_top = tl.maximum(top, tl.max(scores, 1))
        p = tl.exp2(scores - new_top[:, None])
        rescale = tl.exp2(top - new_top)
        total = total * rescale + tl.sum(p, 1)
        v = tl.load(v_base + pos[:, None] * sv2 + d[None, :] * sv3, mask=live[:, None], other=0.0).to(dot_type)
        # Probabilities rounded to the cache's dtype, as flash attention multiplies them.
        p = p.to(values.dtype.element_ty).to(dot_type)
        acc = acc * rescale[:, None] + tl.dot(p, v, input_precision="ieee")
        top = new_top
    # A chunk past the length ran no step: total 0, top -inf, so its lse is -inf and nothing is NaN.
    safe_total = tl.where(total > 0, total, 1.0)
    at = row * splits + split
    tl.store(lse + at * group + g, top + tl.log2(safe_total), mask=g < group)
    # A dead chunk's output is never read (the combine stops at the length): skip the write.
    rows_out = tl.where(start < length, group, 0)
    out_ptrs = partial + (at * group + g[:, None]) * HEAD_DIM + d[None, :]
    tl.store(out_ptrs, acc / safe_total[:, None], mask=g[:, None] < rows_out)


@triton.jit
def combine_kernel(
    partial, lse, visible, out,
    so0, so1, so2, so3,
    kv_heads, group, capacity, chunk, splits,
    SPLITS_BLOCK: tl.constexpr, HEAD_DIM: tl.constexpr, PDL: tl.constexpr,
):  # fmt: skip
    """Each (slot x key/value head, query head of the group) program: its live chunks merged."""
    if PDL:
        after_previous_kernel()
    row, g = tl.program_id(0), tl.program_id(1)
    slot, head = row // kv_heads, row % kv_heads
    length = tl.minimum(tl.load(visible + slot).to(tl.int32), capacity)
    s, d = tl.arange(0, SPLITS_BLOCK), tl.arange(0, HEAD_DIM)
    # Only chunks below the length are read: the others' outputs were never written.
    live = s < tl.cdiv(length, chunk)
    chunk_lse = tl.load(lse + (row * splits + s) * group + g, mask=live, other=float("-inf"))
    top = tl.max(chunk_lse, 0)
    top = tl.where(top == float("-inf"), 0.0, top)
    weight = tl.exp2(chunk_lse - top)
    total = tl.sum(weight, 0)
    parts_ptrs = partial + ((row * splits + s[:, None]) * group + g) * HEAD_DIM + d[None, :]
    parts = tl.load(parts_ptrs, mask=live[:, None], other=0.0)
    merged = tl.sum(parts * weight[:, None], 0) / tl.where(total > 0, total, 1.0)
    out_ptrs = out + slot * so0 + head * so1 + g * so2 + d * so3
    tl.store(out_ptrs, merged.to(out.dtype.element_ty))
