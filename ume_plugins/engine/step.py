"""One decoder step for every slot at once, with shapes that never change.

The step runs the checkpoint's own modules (embedding, RMS norms, projections, MLPs, rotary
embedding; a loaded LoRA adapter's layers included) and adds only the attention over the slot KV
cache, so its arithmetic is the decoder's:

- each slot writes its new key and value at its own length, and attends to its positions
  ``0..length`` of a ``[slots, kv_heads, capacity, head_dim]`` buffer: SDPA with an additive mask
  over the rest, or (on CUDA, see :mod:`ume_plugins.engine.attention`) a kernel that reads only
  those positions;
- grouped-query attention reads each key/value head once: a slot's query heads are grouped under
  their key/value head (``[slots, kv_heads, group, head_dim]``), the layout transformers itself
  uses for one query token;
- the M-RoPE position of the new token is the slot's length plus its offset (text tokens after a
  prompt advance all three sections together, as ``generate`` does).

Nothing in it synchronises with the host or allocates by data-dependent sizes, so it can be
captured in a CUDA graph or compiled with ``torch.compile``. A slot that feeds nothing this step
(empty or finished) writes to and attends to position 0 only: harmless, and never NaN.

At batch 1 a step is a chain of small kernels, each too short to reach the memory bandwidth
(profiled on an H200: the kernels' own time is ~97% of a replayed step's, so launch gaps are
not the cost; kernel count and each kernel's size are). So what is the same for every layer is
computed once per step (the attention mask, the signed sine of the rotation); the checkpoint's
RMS norms run as torch's fused ``rms_norm`` with the rounding steps of transformers' own (two
kernels each instead of eight; a norm that is not the stock one, or that a hook watches, runs as
its module); and on CUDA the engine passes each layer's query, key and value projections as one
weight (:func:`fused_projections`): the three small GEMVs took 0.46 ms of a 2.8 ms step, mostly
fixed per-kernel cost; fused, 0.15 ms. At one slot each layer can also run as four GEMV kernels
with the norms, the gated activation and the residual additions fused in
(:mod:`ume_plugins.engine.gemv`, tuned and taken per unit where the device runs it faster: :func:`gemv_units`),
and a step that is not compiled rotates and caches each layer's heads in one kernel
(:mod:`ume_plugins.engine.rotary`), at one slot inside the query/key/value GEMV kernel itself.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import torch

from ume_plugins.engine import dependent_launch
from ume_plugins.engine.attention import additive_mask, decode_attention, kernel_usable
from ume_plugins.engine.gemv import decode_linear
from ume_plugins.engine.gemv_tuning import UNITS, LayerShape, gemv_choice
from ume_plugins.engine.hf_model import decoder_shape
from ume_plugins.engine.rotary import (
    project_rotate_and_cache,
    projection_rotary_usable,
    reference_rotate_and_cache,
    rotary_usable,
    rotate_and_cache,
)


def decode_step(
    decoder: torch.nn.Module,
    tokens: torch.Tensor,
    lengths: torch.Tensor,
    offsets: torch.Tensor,
    fed: torch.Tensor,
    keys: list[torch.Tensor],
    values: list[torch.Tensor],
    projections: Sequence[FusedProjection | None] | None = None,
    kernel_attention: bool = False,
    gemv_units: Sequence[frozenset[str]] | None = None,
    kernel_rotary: bool = False,
    fused_rotary: bool = False,
) -> torch.Tensor:
    """Feed one token per slot and return each slot's final-norm state.

    Args:
        decoder: The text decoder (``model.model.language_model``).
        tokens: ``[slots]`` the token each slot feeds.
        lengths: ``[slots]`` tokens already in each slot's cache (the new one is written there).
        offsets: ``[slots]`` M-RoPE offset of each slot (position = index in the cache + offset).
        fed: ``[slots]`` whether the slot feeds a token this step.
        keys: Per layer, ``[slots, kv_heads, capacity, head_dim]`` keys, written in place.
        values: Per layer, the values, likewise.
        projections: Per layer, the fused query/key/value projection to use instead of the three
            modules (see :func:`fused_projections`); None (or a None entry): the modules.
        kernel_attention: Attend with the decode kernel of :mod:`ume_plugins.engine.attention`,
            which reads only each slot's live positions (the caller checks it is available);
            False: SDPA over the whole capacity, the live positions masked.
        gemv_units: Per layer, the units of :data:`ume_plugins.engine.gemv_tuning.UNITS` that run as one
            :func:`~ume_plugins.engine.gemv.decode_linear` kernel each when there is one slot (see
            :func:`gemv_units`; "qkv" also needs the layer's fused projection); None: none.
        kernel_rotary: Rotate and write the cache with :func:`~ume_plugins.engine.rotary.rotate_and_cache`
            (one kernel a layer) where the step is not being compiled (inductor fuses the torch
            operations itself); the caller checks it is available.
        fused_rotary: Where a layer's "qkv" unit runs as a GEMV kernel and ``kernel_rotary`` holds,
            project, rotate and cache in that one kernel
            (:func:`~ume_plugins.engine.rotary.project_rotate_and_cache`; the caller checks it is available).

    Returns:
        ``[slots, hidden]`` final-norm states of the fed tokens (the model's dtype).
    """
    slots, capacity = tokens.shape[0], keys[0].shape[2]
    write = torch.where(fed, lengths, torch.zeros_like(lengths))
    hidden = decoder.embed_tokens(tokens)[:, None]
    mask = None if kernel_attention else additive_mask(write, capacity, hidden.dtype)
    visible = write + 1  # once a step, not once a layer (a kernel each)
    cos, sin = _rotary(decoder, hidden, (write + offsets).view(1, slots, 1).expand(3, slots, 1))
    # rotate_half(x) * sin == roll(x, half) * signed_sin, exactly (a negation is exact).
    half = sin.shape[-1] // 2
    signed_sin = torch.cat([-sin[..., :half], sin[..., half:]], dim=-1)
    fused = projections or [None] * len(decoder.layers)
    # The kernels take one token's row: at more slots the modules' GEMMs run.
    units = gemv_units if gemv_units is not None and slots == 1 else [frozenset()] * len(decoder.layers)
    rotary_kernel = kernel_rotary and not torch.compiler.is_compiling()  # inductor fuses the torch operations itself
    rotate = rotate_and_cache if rotary_kernel else reference_rotate_and_cache
    layers = zip(decoder.layers, keys, values, fused, units, strict=True)
    for layer, layer_keys, layer_values, projection, kernels in layers:
        attention = layer.self_attn
        kv_heads, head_dim = layer_keys.shape[1], layer_keys.shape[3]
        if projection is not None and "qkv" in kernels and fused_rotary and rotary_kernel:
            norm = layer.input_layernorm
            query = project_rotate_and_cache(
                hidden[0], projection.weight, projection.bias, norm.weight, norm.variance_epsilon,
                cos[:, 0], signed_sin[:, 0], layer_keys, layer_values, write,
            )  # fmt: skip
        else:
            query_and_key, value = _query_key_value(layer, hidden, projection, "qkv" in kernels, kv_heads, head_dim)
            query = rotate(query_and_key, value, cos[:, 0], signed_sin[:, 0], layer_keys, layer_values, write)
        heads = query.shape[1]
        grouped = query.reshape(slots, kv_heads, heads // kv_heads, head_dim)
        scale = getattr(attention, "scaling", head_dim**-0.5)
        if mask is None:
            out = decode_attention(grouped, layer_keys, layer_values, visible, scale)
        else:
            out = torch.nn.functional.scaled_dot_product_attention(
                grouped, layer_keys, layer_values, attn_mask=mask, scale=scale
            )
        out = out.reshape(slots, 1, heads * head_dim)
        if "output" in kernels:
            o_proj = attention.o_proj
            hidden = decode_linear(out[0], o_proj.weight, o_proj.bias, residual=hidden[0])[None]
        else:
            hidden = hidden + attention.o_proj(out)
        if "mlp" in kernels:
            mlp, norm = layer.mlp, layer.post_attention_layernorm
            gated = decode_linear(
                hidden[0], mlp.gate_proj.weight, norm=norm.weight, eps=norm.variance_epsilon, up=mlp.up_proj.weight
            )
            hidden = decode_linear(gated, mlp.down_proj.weight, mlp.down_proj.bias, residual=hidden[0])[None]
        else:
            hidden = hidden + layer.mlp(rms_norm(layer.post_attention_layernorm, hidden))
    return rms_norm(decoder.norm, hidden)[:, 0]


class StepPaths(NamedTuple):
    """The faster paths a step takes on its device (see :func:`device_paths`)."""

    projections: list[FusedProjection | None] | None
    kernel_attention: bool
    gemv_units: list[frozenset[str]] | None = None
    kernel_rotary: bool = False
    fused_rotary: bool = False


def device_paths(model: torch.nn.Module) -> StepPaths:
    """What the engine passes to :func:`decode_step` on the model's device.

    On CUDA: the fused projections (held for the caller's call), the decode kernel where it runs and
    agrees with SDPA there, the GEMV kernels where they agree with the modules and are faster
    (:func:`gemv_units`), the rotary kernel where it gives the torch operations' bits, and (at one
    slot, with the "qkv" GEMV unit and the rotary kernel) both in one kernel where that agrees;
    elsewhere none (a CPU step is bound by arithmetic, and the modules' own projections keep it
    closest to transformers).
    """
    if model.device.type != "cuda":
        return StepPaths(None, False)
    # Decided before the checks and tunings below capture graphs of their kernels.
    dependent_launch.prepare(model.device)
    _, heads, kv_heads, head_dim = decoder_shape(model)
    usable = kernel_usable(model.device, model.dtype, heads // kv_heads, head_dim)
    decoder = model.model.language_model
    rotary = rotary_usable(model.device, model.dtype, head_dim)
    units = gemv_units(decoder, model.device, model.dtype)
    rotary_in_gemv = (
        rotary
        and any("qkv" in layer for layer in units or [])
        and projection_rotary_usable(model.device, model.dtype, heads, kv_heads, head_dim)
    )
    return StepPaths(fused_projections(decoder), usable, units, rotary, rotary_in_gemv)


def gemv_units(decoder: torch.nn.Module, device: torch.device, dtype: torch.dtype) -> list[frozenset[str]] | None:
    """Per layer, the units a one-slot step runs as GEMV kernels; None if none.

    A unit runs as a kernel where the device runs it faster (:func:`~ume_plugins.engine.gemv_tuning.gemv_choice`,
    checked on the shape of the first layer whose units all qualify) and the layer's modules for it are the
    stock ones, unhooked (an adapter's or a quantised layer keeps its modules).
    """
    eligible = [_gemv_eligible(layer) for layer in decoder.layers]
    # The shape is read from a layer whose modules are all plain (an adapter's may have no ``weight``).
    whole = [layer for layer, units in zip(decoder.layers, eligible, strict=True) if len(units) == len(UNITS)]
    if not whole:
        return None
    shape = LayerShape.of(whole[0])
    chosen = gemv_choice(device, dtype, shape)
    return [units & chosen for units in eligible] if chosen else None


# down(silu(gate(x)) * up(x)), as these compute it.
_STOCK_MLPS = frozenset({"Qwen2MLP", "Qwen2VLMLP"})
_SILU = frozenset({"SiLU", "SiLUActivation"})


def _gemv_eligible(layer: torch.nn.Module) -> frozenset[str]:
    """The units of ``layer`` whose arithmetic :func:`~ume_plugins.engine.gemv.decode_linear` reproduces."""
    attention, mlp = layer.self_attn, layer.mlp
    units = set()
    if _stock_norm(layer.input_layernorm):
        units.add("qkv")
    if _plain_linear(attention.o_proj):
        units.add("output")
    parts = [getattr(mlp, name, None) for name in ("gate_proj", "up_proj", "down_proj", "act_fn")]
    if (
        type(mlp).__name__ in _STOCK_MLPS
        and not _hooked(mlp)
        and _stock_norm(layer.post_attention_layernorm)
        and all(_plain_linear(part) for part in parts[:3])
        and parts[0].bias is None
        and parts[1].bias is None
        and type(parts[3]).__name__ in _SILU
        and not _hooked(parts[3])
    ):
        units.add("mlp")
    return frozenset(units)


def _query_key_value(
    layer: torch.nn.Module,
    hidden: torch.Tensor,
    projection: FusedProjection | None,
    kernel: bool,
    kv_heads: int,
    head_dim: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The new tokens' query and key heads side by side (rotated together: a third of the kernels), and value heads."""
    slots = hidden.shape[0]
    if projection is not None:
        both = _project(layer.input_layernorm, hidden, projection.weight, projection.bias, kernel)
        query_and_key = both[..., : projection.split].view(slots, -1, head_dim)
        return query_and_key, both[..., projection.split :].view(slots, kv_heads, head_dim)
    attention = layer.self_attn
    normed = rms_norm(layer.input_layernorm, hidden)
    query = attention.q_proj(normed).view(slots, -1, head_dim)
    key = attention.k_proj(normed).view(slots, kv_heads, head_dim)
    return torch.cat([query, key], dim=1), attention.v_proj(normed).view(slots, kv_heads, head_dim)


def _project(
    norm: torch.nn.Module, hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, kernel: bool
) -> torch.Tensor:
    """``linear(norm(hidden), weight, bias)``: as one GEMV kernel (one slot), or the norm and a GEMM."""
    if kernel:
        return decode_linear(hidden[0], weight, bias, norm=norm.weight, eps=norm.variance_epsilon)[None]
    return torch.nn.functional.linear(rms_norm(norm, hidden), weight, bias)


class FusedProjection(NamedTuple):
    """One layer's query, key and value projections as one: rows ``[:split]`` are query and key."""

    weight: torch.Tensor
    bias: torch.Tensor | None
    split: int


def fused_projections(decoder: torch.nn.Module) -> list[FusedProjection | None]:
    """Per layer, its query/key/value projections concatenated into one weight (and one bias).

    The same products in one GEMV (rounding may differ from three by a last bit, as between GEMM
    kernels). Only plain ``torch.nn.Linear`` modules without hooks are fused (an adapter, a quantised layer or
    a hook keeps its module: None for that layer). The copies hold the three weights once more
    (about 6% of a Qwen2-VL decoder's weights) for as long as the caller keeps them.
    """
    fused: list[FusedProjection | None] = []
    for layer in decoder.layers:
        modules = [getattr(layer.self_attn, name) for name in ("q_proj", "k_proj", "v_proj")]
        plain = all(_plain_linear(module) for module in modules)
        biased = [module.bias is not None for module in modules] if plain else []
        if not plain or len(set(biased)) != 1:
            fused.append(None)
            continue
        weight = torch.cat([module.weight.detach() for module in modules])
        bias = torch.cat([module.bias.detach() for module in modules]) if biased[0] else None
        fused.append(FusedProjection(weight, bias, modules[0].out_features + modules[1].out_features))
    return fused


_STOCK_NORMS = frozenset({"Qwen2RMSNorm", "Qwen2VLRMSNorm"})


def rms_norm(norm: torch.nn.Module, hidden: torch.Tensor) -> torch.Tensor:
    """``norm(hidden)``; transformers' RMS norm as torch's fused one, rounded where transformers rounds."""
    if not _stock_norm(norm):
        return norm(hidden)
    # Like transformers: the statistics and the scaling in float32, rounded to the input's dtype, then
    # the weight (torch's rms_norm upcasts reduced precision itself, in one kernel).
    return norm.weight * torch.nn.functional.rms_norm(hidden, norm.weight.shape, eps=norm.variance_epsilon)


def _stock_norm(norm: torch.nn.Module) -> bool:
    return type(norm).__name__ in _STOCK_NORMS and not _hooked(norm)


def _plain_linear(module: torch.nn.Module | None) -> bool:
    """A ``torch.nn.Linear`` itself (not an adapter's or a quantised subclass) that no hook watches."""
    return type(module) is torch.nn.Linear and not _hooked(module)


def _hooked(module: torch.nn.Module) -> bool:
    return bool(module._forward_hooks or module._forward_pre_hooks)


def _rotary(decoder: torch.nn.Module, hidden: torch.Tensor, positions: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """``[slots, 1, head_dim]`` cos and sin of the M-RoPE positions, sections already interleaved.

    transformers >= 5.1x interleaves the temporal/height/width sections inside the rotary module;
    older 5.x returns one set per section (a leading axis of 3) for the attention to interleave.
    """
    cos, sin = decoder.rotary_emb(hidden, positions)
    if cos.dim() == 4:
        config = decoder.config
        parameters = getattr(config, "rope_parameters", None) or getattr(config, "rope_scaling", None) or {}
        sections = list(parameters["mrope_section"]) * 2
        cos, sin = (
            torch.cat([part[i % 3] for i, part in enumerate(x.split(sections, dim=-1))], dim=-1) for x in (cos, sin)
        )
    return cos, sin
