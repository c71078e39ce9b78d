from __future__ import annotations

import pytest
import torch

pytest.importorskip("triton")  # conftest turns Triton's interpreter on where there is no GPU

from ume_plugins.engine import gemv, rotary
from ume_plugins.engine.rotary import (
    project_rotate_and_cache,
    projection_rotary_usable,
    reference_project_rotate_and_cache,
    reference_rotate_and_cache,
    rotary_usable,
    rotate_and_cache,
)


def case(device, dtype, slots=3, heads=6, kv_heads=2, head_dim=64, capacity=40, seed=0):
    """Inputs laid out as the step lays them out: query, key and value heads sliced from one projection."""
    generator = torch.Generator().manual_seed(seed)
    projected = torch.randn(slots, 1, (heads + 2 * kv_heads) * head_dim, generator=generator).to(device, dtype)
    split = (heads + kv_heads) * head_dim
    query_and_key = projected[..., :split].view(slots, heads + kv_heads, head_dim)
    value = projected[..., split:].view(slots, kv_heads, head_dim)
    cos, sin = (torch.randn(slots, 1, head_dim, generator=generator).to(device, dtype) for _ in range(2))
    caches = [torch.randn(slots, kv_heads, capacity, head_dim, generator=generator).to(device, dtype) for _ in range(2)]
    write = torch.tensor([0, capacity - 1, 7][:slots], device=device)
    return [query_and_key, value, cos[:, 0], sin[:, 0], *caches, write]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_the_kernel_gives_the_torch_operations_bits(triton_device, dtype):
    inputs = case(triton_device, dtype)
    expected_inputs = [tensor.clone() for tensor in inputs]
    query = rotate_and_cache(*inputs)
    expected = reference_rotate_and_cache(*expected_inputs)
    assert query.shape == (3, 6, 64) and query.dtype == dtype
    assert torch.equal(query, expected)
    # Keys and values land at each slot's own position, and every other position keeps its value.
    assert torch.equal(inputs[4], expected_inputs[4]) and torch.equal(inputs[5], expected_inputs[5])


def test_the_op_registration_passes_opcheck(triton_device):
    torch.library.opcheck(rotate_and_cache, case(triton_device, torch.float32, slots=2, head_dim=16))


def test_a_head_dim_the_kernel_cannot_tile_is_refused(triton_device):
    with pytest.raises(ValueError, match="head_dim"):
        rotate_and_cache(*case(triton_device, torch.float32, head_dim=24))


def test_the_kernel_is_used_only_where_it_builds_and_gives_the_same_bits(triton_device, monkeypatch, caplog):
    assert rotary_usable(triton_device, torch.float32, 64)
    assert not rotary_usable(triton_device, torch.float32, 24)  # a head_dim the kernel cannot tile

    def rounded_differently(*inputs):
        return reference_rotate_and_cache(*inputs) * (1 + 2**-10)

    monkeypatch.setattr(rotary, "rotate_and_cache", rounded_differently)
    rotary_usable.cache_clear()
    try:
        assert not rotary_usable(triton_device, torch.float32, 32)
    finally:
        rotary_usable.cache_clear()
    assert "differs from the torch operations" in caplog.text


def projection_case(device, dtype, heads=6, kv_heads=2, head_dim=16, hidden=96, capacity=12, bias=True, seed=1):
    generator = torch.Generator().manual_seed(seed)

    def rand(*size, scale=1.0):
        return (torch.randn(*size, generator=generator) * scale).to(device, dtype)

    n = (heads + 2 * kv_heads) * head_dim
    weight = rand(n, hidden, scale=hidden**-0.5)
    caches = [rand(1, kv_heads, capacity, head_dim) for _ in range(2)]
    cos, signed_sin = rand(1, head_dim), rand(1, head_dim)
    norm, write = 1 + rand(hidden, scale=0.1), torch.tensor([capacity - 3], device=device)
    return [rand(1, hidden), weight, rand(n) if bias else None, norm, 1e-6, cos, signed_sin, *caches, write]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("block_n", [2, 8, 64], ids=["one-pair", "four-pairs", "whole-half-heads"])
def test_the_fused_projection_rotates_and_caches_as_the_modules_and_torch_operations(
    triton_device, monkeypatch, dtype, block_n
):
    # Every number of output pairs a program may take (from the GEMV kernel's tuned block sizes).
    monkeypatch.setattr(gemv, "_tuned", {})
    inputs = projection_case(triton_device, dtype, bias=block_n != 8)
    (n, k), device = inputs[1].shape, inputs[1].device
    gemv.use_config(n, k, False, dtype, device, gemv.KernelConfig(block_n, 64, 4))
    expected_inputs = [value.clone() if isinstance(value, torch.Tensor) else value for value in inputs]
    query = project_rotate_and_cache(*inputs)
    expected = reference_project_rotate_and_cache(*expected_inputs)
    assert query.shape == (1, 6, 16) and query.dtype == dtype
    if triton_device.type == "cpu" and dtype == torch.bfloat16:
        # The same bits: on the CPU the sums' order differs too little to show after rounding.
        assert torch.equal(query, expected)
        assert torch.equal(inputs[7], expected_inputs[7]) and torch.equal(inputs[8], expected_inputs[8])
    else:
        tolerance = 1e-4 if dtype == torch.float32 else 2e-2
        for actual, wanted in [(query, expected), (inputs[7], expected_inputs[7]), (inputs[8], expected_inputs[8])]:
            torch.testing.assert_close(actual, wanted, atol=tolerance, rtol=0)
    # Only the written position changes in the caches.
    for cache, before in ((inputs[7], expected_inputs[7]), (inputs[8], expected_inputs[8])):
        assert torch.equal(
            torch.cat([cache[:, :, :9], cache[:, :, 10:]], 2), torch.cat([before[:, :, :9], before[:, :, 10:]], 2)
        )


def test_the_fused_projection_registration_passes_opcheck(triton_device):
    torch.library.opcheck(project_rotate_and_cache, projection_case(triton_device, torch.float32))


def test_the_fused_projection_refuses_what_it_cannot_split_into_heads(triton_device):
    inputs = projection_case(triton_device, torch.float32)
    with pytest.raises(ValueError, match="one slot's row, not 2"):
        project_rotate_and_cache(inputs[0].expand(2, -1), *inputs[1:])
    with pytest.raises(ValueError, match="not query, key and value heads of 16"):
        project_rotate_and_cache(inputs[0], inputs[1][:-8], inputs[2][:-8], *inputs[3:])


def test_the_fused_projection_is_used_only_where_it_builds_and_agrees(triton_device, monkeypatch, caplog):
    assert projection_rotary_usable(triton_device, torch.bfloat16, 6, 2, 32)
    assert not projection_rotary_usable(triton_device, torch.bfloat16, 6, 2, 24)  # no power of two

    def keys_swapped_halves(x, weight, bias, norm, eps, cos, signed_sin, keys, values, write):
        out = reference_project_rotate_and_cache(x, weight, bias, norm, eps, cos, signed_sin, keys, values, write)
        keys[:, :, write] = keys[:, :, write].roll(1, dims=-1)
        return out

    monkeypatch.setattr(rotary, "project_rotate_and_cache", keys_swapped_halves)
    projection_rotary_usable.cache_clear()
    try:
        assert not projection_rotary_usable(triton_device, torch.bfloat16, 6, 2, 16)
    finally:
        projection_rotary_usable.cache_clear()
    assert "disagrees with the modules" in caplog.text
