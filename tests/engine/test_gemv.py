from __future__ import annotations

import pytest
import torch

pytest.importorskip("triton")  # conftest turns Triton's interpreter on where there is no GPU

from ume_plugins.engine import gemv, gemv_tuning
from ume_plugins.engine.gemv import decode_linear, launch_config, linear_with, reference_linear
from ume_plugins.engine.gemv_tuning import LayerShape, candidate_configs, gemv_choice, tune

# Sizes that tile evenly, and ones that leave partial blocks in both directions.
SHAPES = [LayerShape(64, 128, True, 64, 160), LayerShape(96, 100, False, 72, 37)]


def unit_calls(shape, dtype, device):
    return [(name, call) for name, calls in gemv_tuning._unit_cases(shape, dtype, device).items() for call in calls]


@pytest.mark.parametrize("shape", SHAPES, ids=["even", "ragged"])
def test_each_unit_computes_what_the_modules_compute(triton_device, shape):
    for name, call in unit_calls(shape, torch.float32, triton_device):
        out = decode_linear(**call)
        assert out.shape == (1, call["weight"].shape[0]) and out.dtype == torch.float32
        torch.testing.assert_close(out, reference_linear(**call), atol=1e-5, rtol=1e-5, msg=name)


@pytest.mark.parametrize("shape", SHAPES, ids=["even", "ragged"])
def test_in_bf16_every_rounding_is_the_modules(triton_device, shape):
    # The modules round the norm, the projection, the activation, the product and the sum each to
    # bf16; so does the kernel. On the CPU the sums' order differs too little to show after rounding.
    for name, call in unit_calls(shape, torch.bfloat16, triton_device):
        out, expected = decode_linear(**call), reference_linear(**call)
        if triton_device.type == "cpu":
            assert torch.equal(out, expected), name
        else:
            torch.testing.assert_close(out, expected, atol=2e-2, rtol=2e-2, msg=name)


def test_inputs_the_kernel_does_not_take_are_refused(triton_device):
    x, weight = torch.randn(2, 8, device=triton_device), torch.randn(4, 8, device=triton_device)
    with pytest.raises(ValueError, match="one token's row, not 2"):
        decode_linear(x, weight)
    with pytest.raises(ValueError, match="no bias for a gated projection"):
        decode_linear(x[:1], weight, torch.zeros(4, device=triton_device), up=weight)


def test_a_compiled_caller_runs_the_op_as_is(triton_device):
    (_, gated), (_, down) = unit_calls(SHAPES[0], torch.float32, triton_device)[-2:]

    def mlp(row):
        inner = decode_linear(row, gated["weight"], norm=gated["norm"], eps=1e-6, up=gated["up"])
        return decode_linear(inner, down["weight"], residual=row)

    compiled = torch.compile(mlp, backend="aot_eager", fullgraph=True)
    assert torch.equal(compiled(gated["x"]), mlp(gated["x"]))


def test_the_op_registration_passes_opcheck(triton_device):
    for _, call in unit_calls(SHAPES[1], torch.float32, triton_device):
        torch.library.opcheck(decode_linear, (), call)


@pytest.mark.parametrize("shape", SHAPES, ids=["even", "ragged"])
def test_every_configuration_the_tuning_may_pick_computes_the_same(triton_device, shape):
    # Whichever block sizes a device is tuned to, the results are the modules' (bit for bit on the CPU).
    for name, call in unit_calls(shape, torch.bfloat16, triton_device):
        n, k = call["weight"].shape
        configs = candidate_configs(n, k, gemv.multiprocessors(triton_device))
        assert len(configs) >= 3 and len(set(configs)) == len(configs)
        expected = reference_linear(**call)
        for config in configs:
            out = linear_with(config, **call)
            if triton_device.type == "cpu":
                assert torch.equal(out, expected), (name, config)
            else:
                torch.testing.assert_close(out, expected, atol=2e-2, rtol=2e-2, msg=f"{name} {config}")


def test_tuning_keeps_each_calls_fastest_configuration_and_takes_units_faster_than_the_modules(
    triton_device, monkeypatch
):
    # What the tuning does with timings, on any device: a timer that ranks candidates by their
    # outputs, then columns, per program, then fewer warps, and times the modules faster than every
    # kernel on the second call it is given (the output projection: calls come in unit order).
    shape, timed = SHAPES[0], []
    monkeypatch.setattr(gemv, "_tuned", {})  # what this fake timing tunes stays in this test

    def rank(config):
        return config.block_n, config.block_k, -config.warps, config.stages

    def timer(runs, repeats):
        assert repeats >= 1 and "modules" in runs
        timed.append(runs)
        order = sorted((key for key in runs if key != "modules"), key=rank)
        seconds = {config: 1e-3 / (1 + place) for place, config in enumerate(order)}
        return {**seconds, "modules": 1e-9 if len(timed) == 2 else 1.0}

    timings = tune(triton_device, torch.float32, shape, timer)
    assert len(timed) == 4 and set(timings) == set(gemv_tuning.UNITS)
    assert timings["output"].kernel > timings["output"].modules
    assert timings["qkv"].kernel < timings["qkv"].modules and timings["mlp"].kernel < timings["mlp"].modules
    for (name, call), runs, chosen in zip(
        unit_calls(shape, torch.float32, triton_device),
        timed,
        sum((t.configs for t in timings.values()), ()),
        strict=True,
    ):
        (n, k), gated = call["weight"].shape, call.get("up") is not None
        assert set(runs) - {"modules"} == set(candidate_configs(n, k, gemv.multiprocessors(triton_device))), name
        assert chosen == max(set(runs) - {"modules"}, key=rank), name
        # From now on the op launches with what the tuning kept.
        assert launch_config(n, k, gated, torch.float32, triton_device) == chosen, name


def test_tuning_leaves_a_unit_whose_kernel_disagrees_to_the_modules_untimed(triton_device, monkeypatch, caplog):
    def off_by_a_little(config, *args, **kwargs):
        return reference_linear(*args, **kwargs) * 1.01

    def timer(runs, repeats):
        timed.append(runs)
        return dict.fromkeys(runs, 1.0)

    timed = []
    monkeypatch.setattr(gemv, "_tuned", {})
    monkeypatch.setattr(gemv, "linear_with", off_by_a_little)
    timings = tune(triton_device, torch.float32, SHAPES[1], timer)
    assert timed == [] and gemv._tuned == {}
    assert all(timing.kernel == float("inf") and timing.kernel > timing.modules for timing in timings.values())
    assert caplog.text.count("disagrees with the modules") == len(gemv_tuning.UNITS)


def test_the_kernel_is_used_only_where_it_builds_and_agrees(triton_device, monkeypatch, caplog):
    chosen = gemv_choice(triton_device, torch.float32, SHAPES[0])
    if triton_device.type == "cuda":  # there also only where its tuned kernels were timed faster than the modules
        timings = gemv_tuning.unit_timings(triton_device, torch.float32, SHAPES[0])
        assert chosen == {name for name, timing in timings.items() if timing.kernel < timing.modules}
    else:
        assert chosen == frozenset(gemv_tuning.UNITS)

    def off_by_a_little(config, *args, **kwargs):
        return reference_linear(*args, **kwargs) * 1.01

    monkeypatch.setattr(gemv, "linear_with", off_by_a_little)
    gemv_choice.cache_clear()
    gemv_tuning.unit_timings.cache_clear()
    try:
        assert gemv_choice(triton_device, torch.float32, SHAPES[1]) == frozenset()
    finally:
        gemv_choice.cache_clear()
        gemv_tuning.unit_timings.cache_clear()
    assert "disagrees with the modules" in caplog.text
