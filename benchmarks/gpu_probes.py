"""What the GPU benchmark measures besides whole runs: the device's copy bandwidth and one step's kernels."""

from __future__ import annotations

import time
from typing import Any

import torch


def bandwidth(device: torch.device) -> float:
    """Bytes per second of a device-to-device copy (read + write), best of a few."""
    size = (1 << 30) if device.type == "cuda" else (1 << 27)
    source = torch.empty(size, dtype=torch.uint8, device=device)
    target = torch.empty_like(source)
    best = float("inf")
    for _ in range(3 if device.type == "cuda" else 2):
        target.copy_(source)
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        for _ in range(10):
            target.copy_(source)
        if device.type == "cuda":
            torch.cuda.synchronize()
        best = min(best, (time.perf_counter() - start) / 10)
    return 2 * size / best


def kernel_profile(step: Any, top: int = 8) -> dict[str, Any] | None:
    """The GPU kernels one eager call of ``step`` launches: how many, their summed time, the costliest.

    At batch 1 a 2B model's layer reads its weights in microseconds, so launches and small kernels,
    not bytes, set the step time. The summed kernel time against the replayed step's time tells
    the two apart: what the kernels take versus the gaps between them. None if the profiler fails.
    """
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile

    try:
        with profile(activities=[ProfilerActivity.CUDA]) as profiler:
            step()
            torch.cuda.synchronize()
        kernels = [
            (event.name, event.device_time_total)
            for event in profiler.events()
            if event.device_type == DeviceType.CUDA and not event.name.lower().startswith(("memcpy", "memset"))
        ]
    except Exception as error:  # a profiler problem must not cost the run its other numbers
        print(f"kernel profile unavailable: {error}", flush=True)
        return None
    if not kernels:
        return None
    by_name: dict[str, list[float]] = {}
    for name, microseconds in kernels:
        by_name.setdefault(name, []).append(microseconds)
    costliest = sorted(by_name.items(), key=lambda item: -sum(item[1]))[:top]
    return {
        "count": len(kernels),
        "busy_ms": sum(microseconds for _, microseconds in kernels) / 1e3,
        "top": [{"kernel": name[:90], "calls": len(times), "ms": sum(times) / 1e3} for name, times in costliest],
    }


def aten_op_count(step: Any) -> int:
    """Computing aten operations (views aside) one call of ``step`` dispatches: kernels, counted on the CPU."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class Counter(TorchDispatchMode):
        count = 0

        def __torch_dispatch__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
            out = func(*args, **(kwargs or {}))
            inputs = {arg.untyped_storage().data_ptr() for arg in args if isinstance(arg, torch.Tensor)}
            aliased = isinstance(out, torch.Tensor) and out.untyped_storage().data_ptr() in inputs
            if func._schema.name.endswith("_") or not aliased:  # in place, or a new tensor
                Counter.count += 1
            return out

    with torch.inference_mode(), Counter():
        step()
    return Counter.count
