from __future__ import annotations

import pytest
import torch

pytest.importorskip("triton")  # conftest turns Triton's interpreter on where there is no GPU

from ume_plugins.engine import rotary
from ume_plugins.engine.rotary import reference_rotate_and_cache, rotary_usable, rotate_and_cache


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
