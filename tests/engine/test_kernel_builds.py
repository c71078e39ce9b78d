"""The Triton kernels build for the GPUs the engine targets, at UME-R1's shapes, checked without a GPU.

On a GPU a kernel that fails to build, or one the tuning would pick, quietly leaves the step on the
slower modules (the engine falls back, by design). These tests say it here instead: every kernel and
every GEMV configuration the tuning may try builds for sm_80 (A100) and sm_90 (H100, H200), keeps
its values in registers (no spills), and streams its weights, keys and values in vector loads (a
GEMV's bandwidth depends on it). ``kernel_builds.py`` compiles them in a process of its own.
"""

from __future__ import annotations

import functools
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

triton = pytest.importorskip("triton")

# Each model on sm_90 (with dependent launch); sm_80 (without) at 2B's shapes, where its kernels differ.
BUILDS = [("sm_80", "2B"), ("sm_90", "2B"), ("sm_90", "7B")]


@functools.cache
def builds(target: str, model: str) -> list[dict]:
    """Every kernel build for ``target`` at UME-R1-``model``'s shapes, as ``kernel_builds.py`` reports them."""
    # Without the interpreter the tests' conftest turns on: under it triton.jit gives nothing to compile.
    environment = {name: value for name, value in os.environ.items() if name != "TRITON_INTERPRET"}
    script = Path(__file__).with_name("kernel_builds.py")
    run = subprocess.run(
        [sys.executable, str(script), target, model], capture_output=True, text=True, env=environment, timeout=600
    )
    assert run.returncode == 0, run.stderr[-3000:]
    return [json.loads(line) for line in run.stdout.splitlines()]


@pytest.fixture(autouse=True)
def _cuda_tools():
    try:
        triton.knobs.nvidia.ptxas.path, triton.knobs.nvidia.cuobjdump.path  # noqa: B018 - raises where absent
    except Exception as error:  # noqa: BLE001 - any failure to find them means: cannot check here
        pytest.skip(f"Triton's CUDA tools are not available here ({error})")


def name(record: dict) -> str:
    return f"{record['target']} {record['kernel']} {record['case']}"


@pytest.mark.parametrize(("target", "model"), BUILDS)
def test_every_kernel_and_configuration_builds(target, model):
    records = builds(target, model)
    kernels = {record["kernel"] for record in records}
    assert kernels == {"linear", "rotary", "attention split", "attention combine"}
    # Each GEMV call has the tuning's few candidates; the q/k/v ones are built fused with the rotary too.
    assert sum(record["kernel"] == "linear" for record in records) >= 4 * 3
    failed = [f"{name(record)}: {record['error']}" for record in records if record["error"]]
    assert not failed, "\n".join(failed)


@pytest.mark.parametrize(("target", "model"), BUILDS)
def test_no_kernel_spills_its_registers(target, model):
    spilled = [f"{name(r)}: {r['stack']} bytes" for r in builds(target, model) if not r["error"] and r["stack"]]
    assert not spilled, "\n".join(spilled)


@pytest.mark.parametrize(("target", "model"), BUILDS)
def test_weights_keys_and_values_stream_in_vector_loads(target, model):
    # A GEMV reads each weight byte once: scalar two-byte loads would cap it far below the bandwidth.
    streaming = [r for r in builds(target, model) if not r["error"] and r["streamed_bytes"]]
    assert {r["kernel"] for r in streaming} == {"linear", "rotary", "attention split"}
    scalar = [
        f"{name(r)}: {r['vector_bytes']} of {r['streamed_bytes']} bytes"
        for r in streaming
        if r["vector_bytes"] < r["streamed_bytes"]
    ]
    assert not scalar, "\n".join(scalar)


@pytest.mark.parametrize("model", ["2B", "7B"])
def test_under_dependent_launch_nothing_is_touched_before_the_previous_kernel_is_done(model):
    # On sm_90 the kernels may start while the one ahead still runs (engine.dependent_launch): only
    # L2 prefetches of weights may come before the wait, never a load or store of anything else.
    records = [r for r in builds("sm_90", model) if not r["error"] and r["case"] != f"{model} all slots"]
    early = [name(r) for r in records if not r["waits_first"]]
    assert not early, "\n".join(early)
    # The GEMVs fetch their weight rows before waiting: the traffic that overlaps the kernel ahead.
    unfetched = [name(r) for r in records if r["kernel"] in ("linear", "rotary") and not r["early_prefetches"]]
    assert not unfetched, "\n".join(unfetched)


def test_without_dependent_launch_no_kernel_waits():
    # sm_80 has none: a wait there would be a kernel that was not meant for it.
    assert not any(r["waits"] for r in builds("sm_80", "2B") if not r["error"])
