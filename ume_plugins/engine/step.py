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
fixed per-kernel cost; fused, 0.15 ms.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import torch

from ume_plugins.engine.attention import additive_mask, decode_attention, kernel_usable
from ume_plugins.engine.hf_model import decoder_shape


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

    Returns:
        ``[slots, hidden]`` final-norm states of the fed tokens (the model's dtype).
    """
    slots, capacity = tokens.shape[0], keys[0].shape[2]
    write = torch.where(fed, lengths, torch.zeros_like(lengths))
    rows = torch.arange(slots, device=tokens.device)
    hidden = decoder.embed_tokens(tokens)[:, None]
    mask = None if kernel_attention else additive_mask(write, capacity, hidden.dtype)
    cos, sin = _rotary(decoder, hidden, (write + offsets).view(1, slots, 1).expand(3, slots, 1))
    # rotate_half(x) * sin == roll(x, half) * signed_sin, exactly (a negation is exact).
    half = sin.shape[-1] // 2
    signed_sin = torch.cat([-sin[..., :half], sin[..., half:]], dim=-1)
    fused = projections or [None] * len(decoder.layers)
    for layer, layer_keys, layer_values, projection in zip(decoder.layers, keys, values, fused, strict=True):
        attention = layer.self_attn
        kv_heads, head_dim = layer_keys.shape[1], layer_keys.shape[3]
        normed = rms_norm(layer.input_layernorm, hidden)
        # Query and key heads side by side, rotated together: the same arithmetic in a third of the kernels.
        if projection is not None:
            both = torch.nn.functional.linear(normed, projection.weight, projection.bias)
            query_and_key = both[..., : projection.split].view(slots, -1, head_dim)
            value = both[..., projection.split :].view(slots, kv_heads, head_dim)
        else:
            query = attention.q_proj(normed).view(slots, -1, head_dim)
            key = attention.k_proj(normed).view(slots, kv_heads, head_dim)
            query_and_key = torch.cat([query, key], dim=1)
            value = attention.v_proj(normed).view(slots, kv_heads, head_dim)
        rotated = query_and_key * cos + torch.roll(query_and_key, half, dims=-1) * signed_sin
        heads = rotated.shape[1] - kv_heads
        query, key = rotated[:, :heads], rotated[:, heads:]
        layer_keys[rows, :, write] = key
        layer_values[rows, :, write] = value
        grouped = query.reshape(slots, kv_heads, heads // kv_heads, head_dim)
        scale = getattr(attention, "scaling", head_dim**-0.5)
        if mask is None:
            out = decode_attention(grouped, layer_keys, layer_values, write + 1, scale)
        else:
            out = torch.nn.functional.scaled_dot_product_attention(
                grouped, layer_keys, layer_values, attn_mask=mask, scale=scale
            )
        hidden = hidden + attention.o_proj(out.reshape(slots, 1, heads * head_dim))
        hidden = hidden + layer.mlp(rms_norm(layer.post_attention_layernorm, hidden))
    return rms_norm(decoder.norm, hidden)[:, 0]


class StepPaths(NamedTuple):
    """The faster paths a step takes on its device (see :func:`device_paths`)."""

    projections: list[FusedProjection | None] | None
    kernel_attention: bool


def device_paths(model: torch.nn.Module) -> StepPaths:
    """What the engine passes to :func:`decode_step` on the model's device.

    On CUDA: the fused projections (held for the caller's call) and the decode kernel where it
    runs and agrees with SDPA there; elsewhere neither (a CPU step is bound by arithmetic, and the
    modules' own projections keep it closest to transformers).
    """
    if model.device.type != "cuda":
        return StepPaths(None, False)
    _, heads, kv_heads, head_dim = decoder_shape(model)
    usable = kernel_usable(model.device, model.dtype, heads // kv_heads, head_dim)
    return StepPaths(fused_projections(model.model.language_model), usable)


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
        plain = all(
            type(module) is torch.nn.Linear and not (module._forward_hooks or module._forward_pre_hooks)
            for module in modules
        )
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
    if type(norm).__name__ not in _STOCK_NORMS or norm._forward_hooks or norm._forward_pre_hooks:
        return norm(hidden)
    # Like transformers: the statistics and the scaling in float32, rounded to the input's dtype, then
    # the weight (torch's rms_norm upcasts reduced precision itself, in one kernel).
    return norm.weight * torch.nn.functional.rms_norm(hidden, norm.weight.shape, eps=norm.variance_epsilon)


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
