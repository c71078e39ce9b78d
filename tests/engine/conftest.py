from __future__ import annotations

import pytest
import torch


@pytest.fixture(params=["cpu", pytest.param("cuda", marks=pytest.mark.slow)])
def triton_device(request):
    """Where the Triton kernels run: the CPU under Triton's interpreter (no GPU), or the GPU."""
    from ume_plugins.engine.attention import triton_available

    device = torch.device(request.param)
    if not triton_available(device):
        pytest.skip(f"the Triton kernels cannot run on {device} in this process")
    return device
