"""The Triton kernels of :mod:`ume_plugins.engine.rotary` (imported only where Triton is installed)."""

from __future__ import annotations

import triton
import triton.language as tl

from ume_plugins.engine.gemv_kernels import after_previous_kernel, input_block, inverse_rms, prefetch_rows, rounded


@triton.jit
def rotate_kernel(
    query_and_key, value, cos, signed_sin, keys, values, write, query,
    sqk0, sqk1, sqk2, sv0, sv1, sv2, sc0, sc1, ss0, ss1,
    sk0, sk1, sk2, sk3, svv0, svv1, svv2, svv3,
    heads, kv_heads,
    HEAD_DIM: tl.constexpr, INTERPRETED: tl.constexpr,
):  # fmt: skip
    """Each (slot, head) program: a query head rotated, a key head rotated into the cache, or a value head cached."""
    slot, head = tl.program_id(0), tl.program_id(1)
    dtype = query.dtype.element_ty
    d = tl.arange(0, HEAD_DIM)
    at = tl.load(write + slot)
    if head < heads + kv_heads:
        row = query_and_key + slot * sqk0 + head * sqk1
        x = tl.load(row + d * sqk2).to(tl.float32)
        # torch.roll by half the head: element i takes element (i + half) mod head_dim.
        rolled = tl.load(row + ((d + HEAD_DIM // 2) % HEAD_DIM) * sqk2).to(tl.float32)
        c = tl.load(cos + slot * sc0 + d * sc1).to(tl.float32)
        s = tl.load(signed_sin + slot * ss0 + d * ss1).to(tl.float32)
        # x * cos + roll(x) * signed_sin, each product and the sum rounded as the step's torch operations round.
        cos_part, sin_part = rounded(x * c, dtype, INTERPRETED), rounded(rolled * s, dtype, INTERPRETED)
        rotated = rounded(cos_part + sin_part, dtype, INTERPRETED)
        if head < heads:
            tl.store(query + (slot * heads + head) * HEAD_DIM + d, rotated.to(dtype))
        else:
            cached = keys + slot * sk0 + (head - heads) * sk1 + at * sk2 + d * sk3
            tl.store(cached, rotated.to(keys.dtype.element_ty))
    else:
        kv_head = head - heads - kv_heads
        v = tl.load(value + slot * sv0 + kv_head * sv1 + d * sv2)
        tl.store(values + slot * svv0 + kv_head * svv1 + at * svv2 + d * svv3, v)


@triton.jit
def projection_rotary_kernel(
    x, weight, bias, norm, cos, signed_sin, keys, values, write, query,
    k, eps, sk1, sk2, sk3, sv1, sv2, sv3, heads, kv_heads,
    PAIRS: tl.constexpr, BLOCK_K: tl.constexpr, STAGES: tl.constexpr, HEAD_DIM: tl.constexpr, BIAS: tl.constexpr,
    LINE: tl.constexpr, PDL: tl.constexpr, INTERPRETED: tl.constexpr,
):  # fmt: skip
    """Each program: ``PAIRS`` output pairs ``(i, i + HEAD_DIM / 2)`` of one head, rotated and stored.

    The outputs are the normed row times the query/key/value weight; query heads are rotated and
    stored, key heads rotated into the cache, value heads cached.

    A pair is what the rotation mixes (``roll`` by half a head), so a program rotates what it computed.
    Its weight tile is the pairs' low rows stacked over their high rows, ``[2 * PAIRS, BLOCK_K]``: the
    tile of :func:`~ume_plugins.engine.gemv_kernels.linear_kernel` at ``BLOCK_N = 2 * PAIRS``, so it
    loads as the configuration the tuning timed (two tiles of ``PAIRS`` rows take narrower loads).
    Rounding is the modules' (projection) and the torch operations' (rotation), as in that kernel and
    :func:`rotate_kernel`.
    """
    dtype = query.dtype.element_ty
    half: tl.constexpr = HEAD_DIM // 2
    first = tl.program_id(0) * PAIRS
    head = first // half  # PAIRS divides half: a program's pairs lie in one head
    d = first % half + tl.arange(0, PAIRS)
    stacked = tl.arange(0, 2 * PAIRS)
    rows = head * HEAD_DIM + first % half + stacked % PAIRS + (stacked // PAIRS) * half
    cols = tl.arange(0, BLOCK_K)
    if PDL:  # see gemv_kernels.linear_kernel
        prefetch_rows(weight, rows, k, LINE, BLOCK_K, STAGES)
        after_previous_kernel()
    inverse = inverse_rms(x, k, eps, BLOCK_K, STAGES)
    acc = tl.zeros([2 * PAIRS, BLOCK_K], tl.float32)
    for start in tl.range(0, k, BLOCK_K, num_stages=STAGES):
        at = start + cols
        inside = at < k
        value = input_block(x, norm, at, inside, inverse, True, dtype, INTERPRETED)[None, :]
        acc += tl.load(weight + rows[:, None] * k + at[None, :], mask=inside[None, :], other=0.0).to(tl.float32) * value
    result = tl.sum(acc, 1)
    if BIAS:
        result += tl.load(bias + rows).to(tl.float32)
    # [low rows, high rows] -> [PAIRS, 2] -> the two halves of each pair.
    x_low, x_high = tl.split(tl.permute(tl.reshape(rounded(result, dtype, INTERPRETED), [2, PAIRS]), [1, 0]))
    at = tl.load(write)
    if head < heads + kv_heads:
        # x * cos + roll(x, half) * signed_sin: the low half takes the high half's values and back.
        c_low, c_high = tl.load(cos + d).to(tl.float32), tl.load(cos + half + d).to(tl.float32)
        s_low, s_high = tl.load(signed_sin + d).to(tl.float32), tl.load(signed_sin + half + d).to(tl.float32)
        low_cos, low_sin = rounded(x_low * c_low, dtype, INTERPRETED), rounded(x_high * s_low, dtype, INTERPRETED)
        high_cos, high_sin = rounded(x_high * c_high, dtype, INTERPRETED), rounded(x_low * s_high, dtype, INTERPRETED)
        r_low, r_high = rounded(low_cos + low_sin, dtype, INTERPRETED), rounded(high_cos + high_sin, dtype, INTERPRETED)
        if head < heads:
            tl.store(query + head * HEAD_DIM + d, r_low.to(dtype))
            tl.store(query + head * HEAD_DIM + half + d, r_high.to(dtype))
        else:
            cached = keys + (head - heads) * sk1 + at * sk2
            tl.store(cached + d * sk3, r_low.to(keys.dtype.element_ty))
            tl.store(cached + (half + d) * sk3, r_high.to(keys.dtype.element_ty))
    else:
        cached = values + (head - heads - kv_heads) * sv1 + at * sv2
        tl.store(cached + d * sv3, x_low.to(values.dtype.element_ty))
        tl.store(cached + (half + d) * sv3, x_high.to(values.dtype.element_ty))
