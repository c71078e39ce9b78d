"""What the engine relies on in transformers; each failure names the installed version and what changed."""

from __future__ import annotations

import warnings

import torch
import transformers

from tests.conftest import gradient
from ume_plugins.engine.batching import model_inputs
from ume_plugins.engine.hf_model import cache_keyword, decoder_shape, layer_kv, prefill
from ume_plugins.engine.step import decode_step

VERSION = transformers.__version__


def prefilled(module):
    inputs = model_inputs(module.preprocess(["a cat", gradient((84, 56), seed=1)], mode="generative"))
    with torch.inference_mode():
        hidden, cache, offsets = prefill(module.model, inputs)
    return inputs, cache, offsets


def test_the_cache_keyword_and_the_cached_layers_read_without_warnings(module):
    inputs, cache, offsets = prefilled(module)
    layers, _, kv_heads, head_dim = decoder_shape(module.model)
    keys, values = layer_kv(cache, layers - 1)
    width = inputs["input_ids"].shape[1]
    assert keys.shape == values.shape == (2, kv_heads, width, head_dim), (
        f"transformers {VERSION}: Cache.layers[i].keys/.values no longer hold [batch, kv_heads, length, head_dim]"
    )
    mask = torch.cat([inputs["attention_mask"], torch.ones(2, 1, dtype=torch.long)], dim=1)
    position = (mask.sum(dim=1, keepdim=True) - 1 + offsets).unsqueeze(0).expand(3, -1, -1)
    with warnings.catch_warnings(), torch.inference_mode():
        warnings.simplefilter("error")
        module.model.model.language_model(
            input_ids=torch.tensor([[5], [7]]),
            attention_mask=mask,
            position_ids=position,
            use_cache=True,
            **{cache_keyword(module.model): cache},
        )


def test_the_slot_step_computes_what_the_decoder_computes(module):
    """decode_step runs the decoder's own modules; this fails when their layout or the rotary changes."""
    inputs, cache, offsets = prefilled(module)
    layers, _, kv_heads, head_dim = decoder_shape(module.model)
    width = inputs["input_ids"].shape[1]
    lengths = inputs["attention_mask"].sum(dim=1)
    capacity = width + 8
    keys = [torch.zeros(2, kv_heads, capacity, head_dim) for _ in range(layers)]
    values = [torch.zeros(2, kv_heads, capacity, head_dim) for _ in range(layers)]
    for layer in range(layers):
        cached_keys, cached_values = layer_kv(cache, layer)
        for row, length in enumerate(lengths.tolist()):
            keys[layer][row, :, :length] = cached_keys[row, :, width - length :]
            values[layer][row, :, :length] = cached_values[row, :, width - length :]
    tokens = torch.tensor([5, 7])
    decoder = module.model.model.language_model
    mask = torch.cat([inputs["attention_mask"], torch.ones(2, 1, dtype=torch.long)], dim=1)
    position = (lengths[:, None] + offsets).unsqueeze(0).expand(3, -1, -1)
    with torch.inference_mode():
        ours = decode_step(decoder, tokens, lengths, offsets[:, 0], torch.ones(2, dtype=torch.bool), keys, values)
        theirs = decoder(
            input_ids=tokens[:, None],
            attention_mask=mask,
            position_ids=position,
            use_cache=True,
            **{cache_keyword(module.model): cache},
        ).last_hidden_state[:, -1]
    cosine = torch.nn.functional.cosine_similarity(ours, theirs, dim=-1).min().item()
    assert cosine >= 0.99999, (
        f"transformers {VERSION}: Qwen2-VL's text decoder no longer computes what "
        f"ume_plugins.engine.step.decode_step computes (cosine {cosine:.6f}): its module layout, "
        "rotary embedding or attention changed"
    )
