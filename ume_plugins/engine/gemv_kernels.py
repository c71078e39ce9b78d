"""The Triton kernel of :mod:`ume_plugins.engine.gemv` and its parts (imported only where Triton is installed)."""

from __future__ import annotations

import triton
import triton.language as tl
from triton.language.extra.cuda import gdc_launch_dependents, gdc_wait


@triton.jit
def linear_kernel(
    x, weight, up, bias, norm, residual, out, n, k, eps,
    NORM: tl.constexpr, GATED: tl.constexpr, BIAS: tl.constexpr, RESIDUAL: tl.constexpr,
    BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, STAGES: tl.constexpr, LINE: tl.constexpr, PDL: tl.constexpr,
    INTERPRETED: tl.constexpr,
):  # fmt: skip
    """Each program: ``BLOCK_N`` outputs of one token's (normed) row times the weight, with the epilogue.

    Every value is rounded to the output's dtype where the modules round it; the arithmetic between
    is float32 (also what Triton's interpreter needs: it has no bf16 arithmetic).
    """
    dtype = out.dtype.element_ty
    rows = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    live = rows < n
    cols = tl.arange(0, BLOCK_K)
    if PDL:
        inside_rows = tl.minimum(rows, n - 1)  # the last program's rows past n fetch row n - 1 again
        prefetch_rows(weight, inside_rows, k, LINE, BLOCK_K, STAGES)
        if GATED:
            prefetch_rows(up, inside_rows, k, LINE, BLOCK_K, STAGES)
        after_previous_kernel()
    inverse = 1.0
    if NORM:
        inverse = inverse_rms(x, k, eps, BLOCK_K, STAGES)
    # Products summed per column across the loop, reduced once at the end: one reduction, not one a block.
    acc = tl.zeros([BLOCK_N, BLOCK_K], tl.float32)
    acc_up = tl.zeros([BLOCK_N, BLOCK_K], tl.float32)
    for start in tl.range(0, k, BLOCK_K, num_stages=STAGES):
        at = start + cols
        inside = at < k
        value = input_block(x, norm, at, inside, inverse, NORM, dtype, INTERPRETED)[None, :]
        tile = rows[:, None] * k + at[None, :]
        both = live[:, None] & inside[None, :]
        acc += tl.load(weight + tile, mask=both, other=0.0).to(tl.float32) * value
        if GATED:
            acc_up += tl.load(up + tile, mask=both, other=0.0).to(tl.float32) * value
    result = tl.sum(acc, 1)
    if BIAS:
        result += tl.load(bias + rows, mask=live, other=0.0).to(tl.float32)
    result = rounded(result, dtype, INTERPRETED)
    if GATED:
        # silu(gate) * up, each rounded as the modules round it.
        activated = rounded(result / (1.0 + tl.exp(-result)), dtype, INTERPRETED)
        result = rounded(activated * rounded(tl.sum(acc_up, 1), dtype, INTERPRETED), dtype, INTERPRETED)
    if RESIDUAL:
        result += tl.load(residual + rows, mask=live, other=0.0).to(tl.float32)
    tl.store(out + rows, rounded(result, dtype, INTERPRETED).to(dtype), mask=live)


@triton.jit
def prefetch_rows(weight, rows, k, LINE: tl.constexpr, BLOCK_K: tl.constexpr, STEPS: tl.constexpr):
    """The first ``STEPS`` loop steps' columns (``BLOCK_K`` each) of ``rows`` at ``weight`` fetched into L2.

    What the kernel's loop reads first, so a program's footprint in L2 stays one to a few tiles
    (a whole row slice of a large MLP weight, times the resident programs, could outgrow L2).
    One request per 128-byte line of ``LINE`` values. Only for what no kernel writes while this one
    may run early (weights): it comes before :func:`after_previous_kernel`.
    """
    lines = tl.arange(0, max(1, BLOCK_K // LINE)) * LINE
    for start in range(0, tl.minimum(k, STEPS * BLOCK_K), BLOCK_K):
        at = tl.minimum(start + lines, k - 1)
        tl.inline_asm_elementwise(
            "prefetch.global.L2 [$1]; // $0", "=r,l", [weight + rows[:, None] * k + at[None, :]],
            dtype=tl.int32, is_pure=False, pack=1,
        )  # fmt: skip


@triton.jit
def after_previous_kernel():
    """Wait for the kernel ahead in the stream (its writes visible after), then let the next one launch.

    Under dependent launch a kernel may start before the one ahead has finished: everything it
    loads or stores, except what :func:`prefetch_rows` fetched, comes after this.
    """
    gdc_wait()
    gdc_launch_dependents()


@triton.jit
def inverse_rms(x, k, eps, BLOCK_K: tl.constexpr, STAGES: tl.constexpr):
    """``1 / rms`` of the ``k`` values at ``x``, in float32 (what transformers' RMS norm scales by)."""
    cols = tl.arange(0, BLOCK_K)
    squares = tl.zeros([BLOCK_K], tl.float32)
    for start in tl.range(0, k, BLOCK_K, num_stages=STAGES):
        value = tl.load(x + start + cols, mask=start + cols < k, other=0.0).to(tl.float32)
        squares += value * value
    return tl.math.rsqrt(tl.sum(squares, 0) / k + eps)


@triton.jit
def input_block(x, norm, at, inside, inverse, NORM: tl.constexpr, dtype: tl.constexpr, INTERPRETED: tl.constexpr):
    """Columns ``at`` of the input row as float32, through the RMS norm (``inverse`` = 1 / rms) when ``NORM``."""
    value = tl.load(x + at, mask=inside, other=0.0)
    if NORM:
        # transformers' RMS norm: scaled in float32, rounded, times the weight, rounded.
        value = rounded(value.to(tl.float32) * inverse, dtype, INTERPRETED)
        value = rounded(tl.load(norm + at, mask=inside, other=0.0).to(tl.float32) * value, dtype, INTERPRETED)
    return value.to(tl.float32)


@triton.jit
def rounded(value, dtype: tl.constexpr, INTERPRETED: tl.constexpr):
    """Float32 ``value`` rounded to ``dtype`` (to nearest, ties to even), as float32.

    The interpreter's own cast to bf16 truncates, so there it is done on the bits.
    """
    if INTERPRETED and dtype == tl.bfloat16:
        bits = value.to(tl.int32, bitcast=True)
        bits = (bits + 0x7FFF + ((bits >> 16) & 1)) & -65536
        rounded = bits.to(tl.float32, bitcast=True)
    else:
        rounded = value.to(dtype).to(tl.float32)
    return rounded
