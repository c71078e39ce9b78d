"""The Triton kernel of :mod:`ume_plugins.engine.rotary` (imported only where Triton is installed)."""

from __future__ import annotations

import triton
import triton.language as tl

from ume_plugins.engine.gemv_kernels import rounded


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
