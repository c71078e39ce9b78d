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


def gemv_sweep(layer: torch.nn.Module) -> list[dict[str, Any]]:
    """Each GEMV-kernel call of a layer timed under a grid of block sizes, and as the default, tuned and modules.

    What checks the engine's tuning (``ume_plugins.engine.gemv_tuning``), which tries only a few
    configurations: per call (unit, weight shape), the default configuration's time, the one the
    tuning kept, the best of a wider grid and its share of the weights' bytes per second, and the
    modules' time, each replayed from a CUDA graph over weight copies that overflow the L2 cache.
    """

    from ume_plugins.engine import gemv, gemv_tuning

    weight = layer.self_attn.o_proj.weight
    device, dtype = weight.device, weight.dtype
    gemv_tuning.unit_timings(device, dtype, gemv_tuning.LayerShape.of(layer))  # the tuning, as the engine runs it
    rows = []
    for name, calls in gemv_tuning._unit_cases(gemv_tuning.LayerShape.of(layer), dtype, device).items():
        for call in calls:
            (n, k), gated = call["weight"].shape, call.get("up") is not None
            default = gemv.default_config(n, k, gemv.multiprocessors(device))
            tuned = gemv.launch_config(n, k, gated, dtype, device)
            grid = {
                gemv.KernelConfig(block_n, block_k, 4, stages)
                for block_n in (2, 4, 8, 16, 32)
                for block_k in (256, 512, 1024, 2048)
                for stages in (1, 3)
                if block_k <= 2 * k and block_n * block_k <= 16384
            } | {default, tuned}
            copies = gemv_tuning.cold_copies(call, device)
            runs = gemv_tuning.timed_runs(sorted(grid), copies)
            seconds = gemv_tuning.graph_seconds(runs, gemv_tuning.graph_repeats(copies))
            seconds = {key: value / len(copies) for key, value in seconds.items()}
            best = min((key for key in seconds if key != "modules"), key=seconds.__getitem__)
            read = call["weight"].numel() * call["weight"].element_size() * (2 if gated else 1)
            rows.append(
                {
                    "call": f"{name} {n}x{k}" + (" (gated)" if gated else ""),
                    "default": list(default),
                    "default_us": seconds[default] * 1e6,
                    "tuned": list(tuned),
                    "tuned_us": seconds[tuned] * 1e6,
                    "best": list(best),
                    "best_us": seconds[best] * 1e6,
                    "best_gbs": read / seconds[best] / 1e9,
                    "modules_us": seconds["modules"] * 1e6,
                }
            )
    return rows
