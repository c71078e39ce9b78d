"""What the engine asks of a transformers ``Qwen2VLForConditionalGeneration``, in one place.

- the KV-cache keyword: transformers 5.24 renamed ``past_key_values`` to ``cache`` (the old name
  warns, and goes in 5.40), so the name is read once from the decoder's public signature and the
  output's cache field is read under the same name;
- the prefill: one forward pass over left-padded prompts (vision tower included) with the 3-D
  M-RoPE positions ``generate`` would use, and each row's offset for the tokens that follow;
- each layer's cached keys and values (``Cache.layers[i].keys`` / ``.values``, stable since 5.0).
"""

from __future__ import annotations

import functools
import inspect
from typing import Any

import torch


@functools.cache
def _cache_keyword_of(forward_class: type) -> str:
    parameters = inspect.signature(forward_class.forward).parameters
    return "cache" if "cache" in parameters else "past_key_values"


def cache_keyword(model: torch.nn.Module) -> str:
    """``"cache"`` or ``"past_key_values"``: the KV-cache keyword the installed decoder declares."""
    return _cache_keyword_of(type(model.model.language_model))


def output_cache(model: torch.nn.Module, output: Any) -> Any:
    """The KV cache a forward pass returned, read under the name the installed transformers uses."""
    return output[cache_keyword(model)]


def prompt_positions(model: torch.nn.Module, inputs: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """3-D (M-RoPE) positions of left-padded prompts, and each row's offset for the tokens that follow.

    The same positions ``generate`` uses: a token after the prompt sits at (real tokens before it)
    plus the row's offset.

    Returns:
        ``[3, batch, prompt_len]`` position ids and ``[batch, 1]`` offsets (on the prompts' device).
    """
    input_ids, mask = inputs["input_ids"], inputs["attention_mask"]
    if inputs.get("image_grid_thw") is not None or inputs.get("video_grid_thw") is not None:
        positions, offsets = model.model.get_rope_index(
            input_ids,
            mm_token_type_ids=inputs["mm_token_type_ids"],
            image_grid_thw=inputs.get("image_grid_thw"),
            video_grid_thw=inputs.get("video_grid_thw"),
            attention_mask=mask,
        )
        return positions, offsets.to(input_ids.device)
    text = (mask.long().cumsum(-1) - 1).masked_fill(mask == 0, 1)
    offsets = torch.zeros(input_ids.shape[0], 1, dtype=torch.long, device=input_ids.device)
    return text.unsqueeze(0).expand(3, -1, -1), offsets


def prefill(model: torch.nn.Module, inputs: dict[str, torch.Tensor]) -> tuple[torch.Tensor, Any, torch.Tensor]:
    """One cached forward pass over left-padded prompts.

    Args:
        model: A ``Qwen2VLForConditionalGeneration``.
        inputs: The features the model takes (see :func:`~ume_plugins.engine.batching.model_inputs`).

    Returns:
        The last layer's (final-norm) states ``[batch, prompt_len, hidden]``, the KV cache, and each
        row's M-RoPE offset ``[batch, 1]``.
    """
    positions, offsets = prompt_positions(model, inputs)
    output = model.model(**inputs, position_ids=positions, use_cache=True)
    return output.last_hidden_state, output_cache(model, output), offsets


def layer_kv(cache: Any, layer: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``[batch, kv_heads, length, head_dim]`` keys and values cached by decoder layer ``layer``."""
    cached = cache.layers[layer]
    return cached.keys, cached.values


def decoder_shape(model: torch.nn.Module) -> tuple[int, int, int, int]:
    """``(layers, attention heads, kv heads, head dim)`` of the text decoder."""
    config = model.config.text_config
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    return config.num_hidden_layers, config.num_attention_heads, config.num_key_value_heads, head_dim


def full_attention_only(model: torch.nn.Module) -> bool:
    """False when some decoder layer uses sliding-window attention (only the reference loop runs those)."""
    config = model.config.text_config
    layer_types = getattr(config, "layer_types", None) or ["full_attention"]
    return not getattr(config, "use_sliding_window", False) and set(layer_types) == {"full_attention"}
