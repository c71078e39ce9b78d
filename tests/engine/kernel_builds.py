"""Build the engine's Triton kernels for CUDA GPUs without one, and print what each build looks like.

Run by ``test_kernel_builds.py`` in a process of its own: the tests' process turns Triton's
interpreter on, under which ``triton.jit`` gives no compilable kernels. Triton compiles to a CUDA
binary with the ``ptxas`` it ships, so no GPU is needed. Arguments are specialised as Triton's
launcher specialises them (integers equal to 1 become constants, multiples of 16 and tensors'
addresses are known divisible by 16), so the code is the code a launch on a GPU would get.

Prints one JSON object per build: the kernel, the case, the target, ``error`` (None when it built),
its registers and stack bytes (spilled values live on the stack), ``vector_bytes``: the bytes one
thread loads in 16-byte vector loads, ``streamed_bytes``: the bytes of weights (or keys and
values) one thread loads per loop step, which should all come in such loads, and for dependent
launch (sm_90): ``waits``, whether the kernel waits on the kernel ahead, ``waits_first``, whether
that wait comes before every global load and store, and ``early_prefetches``, the L2 prefetches
before it.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import tempfile

import torch
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

from ume_plugins.engine.attention import _BLOCK_N, _split_length, next_power_of_2
from ume_plugins.engine.attention_kernels import combine_kernel, split_kernel
from ume_plugins.engine.gemv import KernelConfig, line_values
from ume_plugins.engine.gemv_kernels import linear_kernel
from ume_plugins.engine.gemv_tuning import LayerShape, candidate_configs
from ume_plugins.engine.rotary import projection_pairs
from ume_plugins.engine.rotary_kernels import projection_rotary_kernel, rotate_kernel

# Targets: compute capability and multiprocessor count (A100; H100 and H200).
TARGETS = {"sm_80": (80, 108), "sm_90": (90, 132)}
# Programmatic dependent launch: sm_90 and newer (engine.dependent_launch), so the sm_90 builds take it.
DEPENDENT = {"sm_80": False, "sm_90": True}
# UME-R1-2B's and -7B's decoder layers (Qwen2-VL-2B and -7B), and their attention heads.
LAYERS = {
    "2B": (LayerShape(1536, 2048, True, 1536, 8960), 12, 2),
    "7B": (LayerShape(3584, 4608, True, 3584, 18944), 28, 4),
}
HEAD_DIM = 128
LINE = line_values(torch.bfloat16)
_DTYPES = {torch.bfloat16: "bf16", torch.float32: "fp32", torch.int64: "i64", torch.int32: "i32"}


def gemv_calls(shape: LayerShape) -> dict[str, tuple[int, int, dict]]:
    """Each GEMV a layer makes at one slot: its weight's ``n x k`` and the kernel's epilogue flags."""
    plain = {"NORM": False, "GATED": False, "BIAS": False, "RESIDUAL": False}
    return {
        "qkv": (shape.qkv_out, shape.hidden, plain | {"NORM": True, "BIAS": shape.qkv_bias}),
        "output": (shape.hidden, shape.attention_width, plain | {"RESIDUAL": True}),
        "gate and up": (shape.intermediate, shape.hidden, plain | {"NORM": True, "GATED": True}),
        "down": (shape.hidden, shape.intermediate, plain | {"RESIDUAL": True}),
    }


def build(kernel, arch: int, args: dict, constants: dict, warps: int = 4, stages: int = 3) -> dict:
    """Compile ``kernel`` for ``sm_<arch>`` with ``args`` (tensors, ints, floats by name) and ``constants``."""
    signature, specialised, attrs = {}, dict(constants), {}
    for index, name in enumerate(kernel.arg_names):
        value = args.get(name)
        if name in constants or (isinstance(value, int) and value == 1):
            signature[name], specialised[name] = "constexpr", constants.get(name, value)
            continue
        if isinstance(value, torch.Tensor):
            signature[name] = "*" + _DTYPES[value.dtype]
            aligned = value.data_ptr() % 16 == 0
        elif isinstance(value, float):
            signature[name], aligned = "fp32", False
        else:
            signature[name], aligned = "i32", value % 16 == 0
        if aligned:
            attrs[(index,)] = [["tt.divisibility", 16]]
    try:
        compiled = triton.compile(
            ASTSource(kernel, signature, specialised, attrs),
            target=GPUTarget("cuda", arch, 32),
            options={"num_warps": warps, "num_stages": stages},
        )
    except Exception as error:  # noqa: BLE001 - reported, and the test says which build failed
        return {"error": f"{type(error).__name__}: {error}"}
    ptx = compiled.asm["ptx"]
    wait = ptx.find("griddepcontrol.wait")
    memory = re.search(r"\b(ld\.global|st\.global|cp\.async|atom\.global|red\.global)", ptx)
    with tempfile.NamedTemporaryFile(suffix=".cubin") as binary:
        binary.write(compiled.asm["cubin"])
        binary.flush()
        usage = subprocess.run(
            [triton.knobs.nvidia.cuobjdump.path, "-res-usage", binary.name], capture_output=True, text=True, check=True
        ).stdout
    registers, stack = (int(v) for v in re.search(r"REG:(\d+) STACK:(\d+)", usage).groups())
    return {
        "error": None,
        "registers": registers,
        "stack": stack,
        # 16-byte loads: vector loads, and the asynchronous copies (``.cg``) that feed tl.dot.
        "vector_bytes": 16 * len(re.findall(r"ld\.global(?:\.\w+)*\.v4\.b32|cp\.async\.cg\.shared\.global", ptx)),
        "streamed_bytes": None,
        # Under dependent launch: whether the wait comes before every global load and store, and the
        # L2 prefetches before it (what the kernel may touch early).
        "waits": wait >= 0,
        "waits_first": wait >= 0 and (memory is None or wait < memory.start()),
        "early_prefetches": len(re.findall(r"prefetch\.global\.L2", ptx[: max(wait, 0)])),
    }


def gemv_builds(target: str, model: str) -> list[dict]:
    """Every configuration the tuning may try for each of the model's GEMVs, built for ``target``."""
    arch, processors = TARGETS[target]
    shape, _, kv_heads = LAYERS[model]
    x = torch.empty(shape.intermediate, dtype=torch.bfloat16)
    records = []
    for call, (n, k, flags) in gemv_calls(shape).items():
        for config in candidate_configs(n, k, processors):
            block_n, block_k, warps, stages = config
            args = dict.fromkeys(("x", "weight", "up", "bias", "norm", "residual", "out"), x) | {"n": n, "k": k}
            constants = flags | {"BLOCK_N": block_n, "BLOCK_K": block_k, "STAGES": stages, "LINE": LINE}
            constants |= {"PDL": DEPENDENT[target], "INTERPRETED": False}
            record = build(linear_kernel, arch, args | {"eps": 1e-6}, constants, warps)
            record["streamed_bytes"] = (2 if flags["GATED"] else 1) * block_n * block_k * 2 // (32 * warps)
            records.append(record | {"kernel": "linear", "case": f"{model} {call} {tuple(config)}"})
            if call == "qkv":
                pairs = projection_pairs(block_n, HEAD_DIM)
                records.append(projection_build(target, shape, kv_heads, pairs, config) | {"kernel": "rotary"})
    return records


def projection_build(target: str, shape: LayerShape, kv_heads: int, pairs: int, config: KernelConfig) -> dict:
    """The q/k/v projection with rotary and cache write, as ``rotary.project_rotate_and_cache`` launches it."""
    _, block_k, warps, stages = config
    cache = torch.empty(1, kv_heads, 1024, HEAD_DIM, dtype=torch.bfloat16)
    row, write = torch.empty(shape.hidden, dtype=torch.bfloat16), torch.empty(1, dtype=torch.int64)
    args = dict.fromkeys(("x", "weight", "bias", "norm", "cos", "signed_sin", "keys", "values", "query"), row)
    args |= {"write": write, "k": shape.hidden, "eps": 1e-6, "heads": shape.qkv_out // HEAD_DIM - 2 * kv_heads}
    args |= dict(zip(("sk1", "sk2", "sk3"), cache.stride()[1:], strict=True))
    args |= dict(zip(("sv1", "sv2", "sv3"), cache.stride()[1:], strict=True)) | {"kv_heads": kv_heads}
    constants = {"PAIRS": pairs, "BLOCK_K": block_k, "STAGES": stages, "HEAD_DIM": HEAD_DIM, "BIAS": shape.qkv_bias}
    constants |= {"LINE": LINE, "PDL": DEPENDENT[target], "INTERPRETED": False}
    record = build(projection_rotary_kernel, TARGETS[target][0], args, constants, warps)
    # Two weight rows (the pair's halves) of ``block_k`` columns per pair.
    streamed = 2 * pairs * block_k * 2 // (32 * warps)
    return record | {"case": f"{pairs} pairs, {block_k}, {warps}, {stages}", "streamed_bytes": streamed}


def attention_builds(target: str, model: str, slots: int = 8, capacity: int = 2048) -> list[dict]:
    """The decode attention's two kernels and the rotary kernel at the model's head layout, as launched."""
    arch, _ = TARGETS[target]
    shape, heads, kv_heads = LAYERS[model]
    group = heads // kv_heads
    query = torch.empty(slots, kv_heads, group, HEAD_DIM, dtype=torch.bfloat16)
    keys = torch.empty(slots, kv_heads, capacity, HEAD_DIM, dtype=torch.bfloat16)
    visible, write = torch.empty(slots, dtype=torch.int64), torch.empty(slots, dtype=torch.int64)
    chunk = _split_length(capacity, slots * kv_heads)
    splits = -(-capacity // chunk)
    partial = torch.empty(slots * kv_heads, splits, group, HEAD_DIM)
    sizes = {"kv_heads": kv_heads, "group": group, "capacity": capacity, "chunk": chunk, "splits": splits}
    split_args = {"query": query, "keys": keys, "values": keys, "visible": visible, "partial": partial, "lse": partial}
    for prefix, tensor in (("sq", query), ("sk", keys), ("sv", keys)):
        split_args |= {f"{prefix}{i}": stride for i, stride in enumerate(tensor.stride())}
    split = {"GROUP_BLOCK": max(16, next_power_of_2(group)), "HEAD_DIM": HEAD_DIM, "BLOCK_N": _BLOCK_N}
    combine_args = {"partial": partial, "lse": partial, "visible": visible, "out": query}
    combine_args |= {f"so{i}": stride for i, stride in enumerate(query.stride())}
    mixed = torch.empty(slots, heads + kv_heads, HEAD_DIM, dtype=torch.bfloat16)
    table = torch.empty(slots, HEAD_DIM, dtype=torch.bfloat16)
    value = torch.empty(slots, kv_heads, HEAD_DIM, dtype=torch.bfloat16)
    rotate_args = {"query_and_key": mixed, "value": value, "cos": table, "signed_sin": table, "keys": keys}
    rotate_args |= {"values": keys, "write": write, "query": mixed, "heads": heads, "kv_heads": kv_heads}
    strides = (("sqk", mixed), ("sv", value), ("sc", table), ("ss", table), ("sk", keys), ("svv", keys))
    for prefix, tensor in strides:
        rotate_args |= {f"{prefix}{i}": stride for i, stride in enumerate(tensor.stride())}
    constants = {"PDL": DEPENDENT[target], "INTERPRETED": False}
    combine = {"SPLITS_BLOCK": next_power_of_2(splits), "HEAD_DIM": HEAD_DIM, "PDL": DEPENDENT[target]}
    # A block of keys and one of values per loop step, over 4 warps (as attention.decode_attention launches).
    streamed = 2 * _BLOCK_N * HEAD_DIM * 2 // (32 * 4)
    return [
        build(split_kernel, arch, split_args | sizes | {"scale_log2": 0.1}, split | constants, stages=2)
        | {"kernel": "attention split", "case": model, "streamed_bytes": streamed},
        build(combine_kernel, arch, combine_args | sizes, combine) | {"kernel": "attention combine", "case": model},
        build(rotate_kernel, arch, rotate_args, {"HEAD_DIM": HEAD_DIM, "INTERPRETED": False})
        | {"kernel": "rotary", "case": f"{model} all slots"},
    ]


def main(target: str, model: str) -> None:
    """Print one JSON line per build of every kernel for ``target`` at ``model``'s shapes."""
    for record in gemv_builds(target, model) + attention_builds(target, model):
        print(json.dumps(record | {"target": target}))


if __name__ == "__main__":
    main(*sys.argv[1:])
