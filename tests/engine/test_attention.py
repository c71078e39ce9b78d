from __future__ import annotations

import pytest
import torch

pytest.importorskip("triton")  # conftest turns Triton's interpreter on where there is no GPU

from ume_plugins.engine import attention
from ume_plugins.engine.attention import decode_attention, kernel_usable, triton_available

TOLERANCE = {torch.float32: 1e-5, torch.bfloat16: 2e-2}
# (slots, kv_heads, group, head_dim, capacity, visible): lengths of 1, on a chunk boundary (64, 128
# past 4096), one past it, capacity - 1 and capacity; capacities that are not a multiple of a chunk.
SHAPES = [
    (1, 2, 6, 128, 512, [1]),
    (3, 2, 6, 128, 200, [1, 64, 200]),
    (3, 1, 1, 64, 130, [129, 65, 128]),
    (2, 3, 7, 64, 100, [63, 100]),
    (3, 2, 2, 128, 64, [64, 1, 33]),
    (3, 1, 8, 64, 4160, [128, 129, 4159]),
]


def case(slots, kv_heads, group, head_dim, capacity, visible, dtype, device, seed=0):
    generator = torch.Generator().manual_seed(seed)
    # Query heads laid out as the step reshapes them, then viewed per key/value head: not contiguous.
    query = torch.randn(slots, group, kv_heads, head_dim, generator=generator).transpose(1, 2)
    keys, values = (torch.randn(slots, kv_heads, capacity, head_dim, generator=generator) for _ in range(2))
    lengths = torch.tensor(visible, dtype=torch.int64)
    return query.to(device, dtype), keys.to(device, dtype), values.to(device, dtype), lengths.to(device)


def reference(query, keys, values, visible, scale):
    """SDPA in float32 with the additive mask the step uses today."""
    hidden = torch.arange(keys.shape[2], device=keys.device)[None] >= visible[:, None]
    mask = torch.zeros(hidden.shape, device=keys.device).masked_fill_(hidden, -torch.inf)[:, None, None]
    return torch.nn.functional.scaled_dot_product_attention(
        query.float(), keys.float(), values.float(), attn_mask=mask, scale=scale
    )


def poisoned(cache, visible, garbage):
    cache = cache.clone()
    for slot, length in enumerate(visible.tolist()):
        cache[slot, :, length:] = garbage
    return cache


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda shape: "x".join(map(str, shape[:5])))
def test_matches_masked_sdpa(triton_device, shape, dtype):
    query, keys, values, visible = case(*shape, dtype, triton_device)
    scale = shape[3] ** -0.5
    out = decode_attention(query, keys, values, visible, scale)
    assert out.shape == query.shape and out.dtype == dtype
    error = (out.float() - reference(query, keys, values, visible, scale)).abs().max().item()
    assert error <= TOLERANCE[dtype]


@pytest.mark.parametrize("chunks", [1, 2])
@pytest.mark.parametrize("shape", SHAPES[1:3], ids=lambda shape: "x".join(map(str, shape[:5])))
def test_chunks_of_several_blocks_match_too(triton_device, shape, chunks, monkeypatch):
    # Many slots get few chunks per (slot, head) row, each several blocks long.
    monkeypatch.setattr(attention, "_TARGET_PROGRAMS", shape[0] * shape[1] * chunks)
    query, keys, values, visible = case(*shape, torch.float32, triton_device)
    out = decode_attention(query, keys, values, visible, 0.1)
    assert (out - reference(query, keys, values, visible, 0.1)).abs().max().item() <= TOLERANCE[torch.float32]


@pytest.mark.parametrize("garbage", [float("nan"), float("inf"), 1e30])
def test_garbage_past_the_length_changes_nothing(triton_device, garbage):
    # A value read there would spread NaN or inf into the output (0 * inf is NaN too).
    query, keys, values, visible = case(3, 2, 6, 64, 300, [1, 64, 299], torch.bfloat16, triton_device)
    clean = decode_attention(query, keys, values, visible, 0.125)
    keys, values = poisoned(keys, visible, garbage), poisoned(values, visible, garbage)
    assert torch.equal(clean, decode_attention(query, keys, values, visible, 0.125))


def test_a_compiled_caller_runs_the_op_as_is(triton_device):
    def attend(query, keys, values, visible):
        return decode_attention(query, keys, values, visible, 0.125) * 2

    compiled = torch.compile(attend, backend="aot_eager", dynamic=True, fullgraph=True)
    for slots in (2, 3):
        inputs = case(slots, 2, 6, 64, 130, [1, 65, 130][:slots], torch.float32, triton_device)
        assert torch.equal(compiled(*inputs), attend(*inputs))


def test_the_op_registration_passes_opcheck(triton_device):
    inputs = case(2, 2, 3, 64, 100, [1, 70], torch.float32, triton_device)
    torch.library.opcheck(decode_attention, (*inputs, 0.125))


def test_a_head_dim_the_kernel_cannot_tile_is_refused(triton_device):
    query, keys, values, visible = case(1, 1, 2, 80, 64, [3], torch.float32, triton_device)
    with pytest.raises(ValueError, match="head_dim"):
        decode_attention(query, keys, values, visible, 0.1)


@pytest.mark.slow
def test_a_cuda_graph_replays_the_op_with_new_lengths():
    cuda = torch.device("cuda")
    if not torch.cuda.is_available() or not triton_available(cuda):
        pytest.skip("needs a GPU that runs Triton")
    query, keys, values, visible = case(3, 2, 6, 128, 300, [1, 64, 299], torch.bfloat16, cuda)
    decode_attention(query, keys, values, visible, 0.1)  # compiles the kernels outside the capture
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = decode_attention(query, keys, values, visible, 0.1)
    visible.copy_(torch.tensor([2, 65, 300]))
    graph.replay()
    assert torch.equal(out, decode_attention(query, keys, values, visible, 0.1))


def test_the_cpu_needs_the_interpreter(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    assert not triton_available(torch.device("cpu"))
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert triton_available(torch.device("cpu"))
    monkeypatch.setattr(attention.importlib.util, "find_spec", lambda name: None)
    assert not triton_available(torch.device("cpu"))


def test_the_kernel_is_used_only_where_it_builds_and_agrees(triton_device, monkeypatch, caplog):
    assert kernel_usable(triton_device, torch.float32, 6, 64)
    assert not kernel_usable(triton_device, torch.float32, 6, 80)  # a head_dim the kernel cannot tile

    def wrong(query, keys, values, visible, scale):
        return torch.zeros_like(query)

    monkeypatch.setattr(attention, "decode_attention", wrong)
    kernel_usable.cache_clear()
    try:
        assert not kernel_usable(triton_device, torch.float32, 5, 64)
    finally:
        kernel_usable.cache_clear()
    assert "disagrees with SDPA" in caplog.text
