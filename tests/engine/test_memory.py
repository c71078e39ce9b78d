from __future__ import annotations

import gc

import pytest
import torch
from transformers import LogitsProcessor


class Untouched(LogitsProcessor):
    """A user processor that changes nothing: its presence routes a call to the reference loop."""

    def __call__(self, input_ids, scores):
        return scores


def live_float_bytes(exclude: set[int], kv_shape: tuple[int, int]) -> int:
    """Bytes of live float tensors, the excluded ones and KV caches (``[rows, kv_heads, len, head_dim]``) aside."""
    return sum(
        obj.nbytes
        for obj in gc.get_objects()
        if type(obj) is torch.Tensor
        and obj.is_floating_point()
        and id(obj) not in exclude
        and not (obj.dim() == 4 and (obj.shape[1], obj.shape[3]) == kv_shape)
    )


def retained_at_last_step(model, module, budget: int, decoder: str) -> int:
    """Float tensor bytes alive (weights and KV cache aside) during the last decoding step."""
    weights = {id(tensor) for tensor in [*module.model.parameters(), *module.model.buffers()]}
    config = module.model.config.text_config
    kv_shape = (config.num_key_value_heads, config.hidden_size // config.num_attention_heads)
    calls, measured = [], []

    def measure(mod, args, output):
        calls.append(1)  # the prefill, then one call per decode step
        if len(calls) == budget + 2:  # budget steps, then the forced <gen_emb>
            measured.append(live_float_bytes(weights | {id(output)}, kv_shape))

    kwargs = {"max_new_tokens": budget}
    if decoder == "reference":
        kwargs["logits_processor"] = [Untouched()]
    handle = module.model.model.language_model.norm.register_forward_hook(measure)
    try:
        model.encode(["a cat", "a dog"], batch_size=2, generation_kwargs=kwargs)
    finally:
        handle.remove()
    assert len(calls) == budget + 2 and len(measured) == 1
    return measured[0]


@pytest.mark.parametrize("decoder", ["slots", "reference"])
def test_memory_besides_the_kv_cache_does_not_grow_with_steps(model, module, decoder):
    short = retained_at_last_step(model, module, 4, decoder)
    long = retained_at_last_step(model, module, 40, decoder)
    hidden = module.get_embedding_dimension()
    layers = module.model.config.text_config.num_hidden_layers
    kept_states_per_step = 2 * (layers + 1) * hidden * 4  # what output_hidden_states would keep
    assert long - short < kept_states_per_step  # 36 more steps keep less than one step's states
