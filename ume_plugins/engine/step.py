"""One decoder step for every slot at once, with shapes that never change.

The step runs the checkpoint's own modules (embedding, RMS norms, projections, MLPs, rotary
embedding; a loaded LoRA adapter's layers included) and adds only the attention over the slot KV
cache, so its arithmetic is the decoder's:

- each slot writes its new key and value at its own length, and attends to its positions
  ``0..length`` of a ``[slots, kv_heads, capacity, head_dim]`` buffer (a boolean mask hides the rest);
- grouped-query attention reads each key/value head once: a slot's query heads are grouped under
  their key/value head (``[slots, kv_heads, group, head_dim]``), the layout transformers itself
  uses for one query token;
- the M-RoPE position of the new token is the slot's length plus its offset (text tokens after a
  prompt advance all three sections together, as ``generate`` does).

Nothing in it synchronises with the host or allocates by data-dependent sizes, so it can be
captured in a CUDA graph or compiled with ``torch.compile``. A slot that feeds nothing this step
(empty or finished) writes to and attends to position 0 only: harmless, and never NaN.

At batch 1 a step's time is set by how many kernels it launches, not by the bytes it reads, so
what is the same for every layer is computed once per step (the attention mask as an additive
bias, the signed sine of the rotation), and the checkpoint's RMS norms run as torch's fused
``rms_norm`` with the rounding steps of transformers' own (two kernels each instead of eight).
A norm that is not the stock one (an adapter around it), or that a hook watches, runs as its
module.
"""

from __future__ import annotations

import torch


def decode_step(
    decoder: torch.nn.Module,
    tokens: torch.Tensor,
    lengths: torch.Tensor,
    offsets: torch.Tensor,
    fed: torch.Tensor,
    keys: list[torch.Tensor],
    values: list[torch.Tensor],
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

    Returns:
        ``[slots, hidden]`` final-norm states of the fed tokens (the model's dtype).
    """
    slots, capacity = tokens.shape[0], keys[0].shape[2]
    write = torch.where(fed, lengths, torch.zeros_like(lengths))
    rows = torch.arange(slots, device=tokens.device)
    visible = torch.arange(capacity, device=tokens.device)[None] <= write[:, None]
    hidden = decoder.embed_tokens(tokens)[:, None]
    # An additive mask built once: SDPA would convert a boolean one in every layer.
    mask = torch.full(visible.shape, -torch.inf, dtype=hidden.dtype, device=tokens.device).masked_fill_(visible, 0.0)
    mask = mask.view(slots, 1, 1, capacity)
    cos, sin = _rotary(decoder, hidden, (write + offsets).view(1, slots, 1).expand(3, slots, 1))
    # rotate_half(x) * sin == roll(x, half) * signed_sin, exactly (a negation is exact).
    half = sin.shape[-1] // 2
    signed_sin = torch.cat([-sin[..., :half], sin[..., half:]], dim=-1)
    for layer, layer_keys, layer_values in zip(decoder.layers, keys, values, strict=True):
        attention = layer.self_attn
        kv_heads, head_dim = layer_keys.shape[1], layer_keys.shape[3]
        normed = rms_norm(layer.input_layernorm, hidden)
        query = attention.q_proj(normed).view(slots, -1, head_dim)
        key = attention.k_proj(normed).view(slots, kv_heads, head_dim)
        value = attention.v_proj(normed).view(slots, kv_heads, head_dim)
        # Query and key heads rotated together: the same arithmetic in a third of the kernels.
        rotated = torch.cat([query, key], dim=1)
        rotated = rotated * cos + torch.roll(rotated, half, dims=-1) * signed_sin
        heads = query.shape[1]
        query, key = rotated[:, :heads], rotated[:, heads:]
        layer_keys[rows, :, write] = key
        layer_values[rows, :, write] = value
        grouped = query.reshape(slots, kv_heads, heads // kv_heads, head_dim)
        scale = getattr(attention, "scaling", head_dim**-0.5)
        out = torch.nn.functional.scaled_dot_product_attention(
            grouped, layer_keys, layer_values, attn_mask=mask, scale=scale
        )
        hidden = hidden + attention.o_proj(out.reshape(slots, 1, heads * head_dim))
        hidden = hidden + layer.mlp(rms_norm(layer.post_attention_layernorm, hidden))
    return rms_norm(decoder.norm, hidden)[:, 0]


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
