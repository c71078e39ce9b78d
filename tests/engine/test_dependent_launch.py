from __future__ import annotations

import functools

import pytest
import torch

pytest.importorskip("triton")

from ume_plugins.engine import dependent_launch, gemv


def test_off_cuda_and_when_switched_off_kernels_launch_plainly():
    # What the benchmark's "without dependent launch" row relies on, and the CPU's (interpreted) kernels.
    assert not dependent_launch.enabled(torch.device("cpu"))
    cuda = torch.device("cuda", 0)
    with dependent_launch.switched_off():
        assert not dependent_launch.enabled(cuda)
        with pytest.raises(RuntimeError), dependent_launch.switched_off():
            raise RuntimeError
        assert not dependent_launch.enabled(cuda)  # the inner block left the outer one's state


@pytest.mark.slow
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_a_chain_of_dependent_launches_in_a_graph_computes_what_the_modules_compute():
    device = torch.device("cuda")
    if torch.cuda.get_device_capability(device) < (9, 0):
        assert not dependent_launch.enabled(device)
        return
    assert dependent_launch.enabled(device)
    generator = torch.Generator(device).manual_seed(1)
    x = torch.randn(1, 1536, generator=generator, device=device, dtype=torch.bfloat16)
    weights = [torch.randn(1536, 1536, generator=generator, device=device, dtype=torch.bfloat16) / 40 for _ in range(8)]
    linear = functools.partial(gemv.linear_with, gemv.default_config(1536, 1536, gemv.multiprocessors(device)))

    def chain(step):
        row = x
        for weight in weights:  # each call reads the row the call before it wrote
            row = step(row, weight, residual=row)
        return row

    expected = chain(gemv.reference_linear)
    chain(linear)  # builds the kernel outside the capture
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = chain(linear)
    for _ in range(3):
        graph.replay()
        torch.cuda.synchronize()
        assert gemv.agrees(out, expected, torch.bfloat16)
