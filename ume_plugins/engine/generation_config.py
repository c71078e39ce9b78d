"""The generation config of a call: the checkpoint's, made greedy with our budget, then the user's overrides.

Also says which fields each decoder honours. Every field that changes the scores is built into
processors from transformers' public classes (:mod:`ume_plugins.engine.processors`), so a field
means what it means for ``generate``. Fields that read each row's token *order* (n-gram bans, bad
words, sequence biases) need the rows side by side as ``generate`` lays them out, so only the
reference loop runs them. Fields no decoder here runs are refused by name rather than ignored.
"""

from __future__ import annotations

import copy
from typing import Any

from transformers import GenerationConfig

# key -> (values that change nothing, why anything else is refused)
_UNSUPPORTED_GENERATION_KWARGS: dict[str, tuple[tuple[Any, ...], str]] = {
    "output_hidden_states": ((None, False), "the <gen_emb> state is captured without keeping per-step hidden states"),
    "output_attentions": ((None, False), "attentions are not returned"),
    "output_scores": ((None, False), "scores are not returned"),
    "output_logits": ((None, False), "logits are not returned"),
    "return_dict_in_generate": ((None, False), "the rollout output is built by ume-plugins"),
    "num_beams": ((None, 1), "beam search is not supported; use num_samples for several rollouts"),
    "num_return_sequences": ((None, 1), "use num_samples for several rollouts per input"),
    "max_length": ((None,), "the budget counts new tokens only; use max_new_tokens"),
    "stop_strings": ((None,), "use stopping_criteria"),
    "max_time": ((None,), "use stopping_criteria"),
    "use_cache": ((None, True), "the engine always decodes with the KV cache"),
    "cache_implementation": ((None,), "the engine manages its own KV cache"),
    "prompt_lookup_num_tokens": ((None,), "speculative decoding is not supported"),
    "guidance_scale": ((None, 1, 1.0), "classifier-free guidance is not supported"),
}
# Score-changing fields that no decoder here builds, with their neutral values.
_REFUSED_FIELDS: dict[str, tuple[Any, ...]] = {
    "encoder_repetition_penalty": (None, 1.0),
    "encoder_no_repeat_ngram_size": (None, 0),
    "forced_bos_token_id": (None,),
    "forced_eos_token_id": (None,),
    "exponential_decay_length_penalty": (None,),
    "begin_suppress_tokens": (None,),
    "remove_invalid_values": (None, False),
    "watermarking_config": (None,),
    "top_h": (None,),
    "diversity_penalty": (None, 0.0),
}
# Fields that read each row's token order: the reference loop runs them (see module docstring).
ORDER_FIELDS: dict[str, tuple[Any, ...]] = {
    "no_repeat_ngram_size": (None, 0),
    "bad_words_ids": (None,),
    "sequence_bias": (None,),
}
_SAMPLING_ONLY = ("temperature", "top_p", "top_k", "min_p", "typical_p", "epsilon_cutoff", "eta_cutoff")


def build_generation_config(
    base: GenerationConfig,
    max_new_tokens: int,
    pad_token_id: int,
    overrides: dict[str, Any],
    num_samples: int = 1,
) -> GenerationConfig:
    """The checkpoint's generation config, made greedy with our token budget, then the user's overrides.

    Several rollouts per input sample unless the overrides say ``do_sample`` themselves.

    Raises:
        ValueError: An override that would break embedding capture or that no decoder honours, one
            that ``generate`` does not know, or ``num_samples > 1`` with greedy decoding or
            ``top_k=1`` (identical rollouts).
    """
    for key, (neutral, why) in _UNSUPPORTED_GENERATION_KWARGS.items():
        if key in overrides and overrides[key] not in neutral:
            raise ValueError(f"generation_kwargs[{key!r}] is not supported: {why}")
    if num_samples < 1:
        raise ValueError(f"num_samples must be positive, got {num_samples}")
    config = copy.deepcopy(base)
    config.max_new_tokens = max_new_tokens
    config.do_sample = num_samples > 1
    if config.pad_token_id is None:
        config.pad_token_id = pad_token_id
    unknown = {key: value for key, value in overrides.items() if not hasattr(config, key)}
    if unknown:
        raise ValueError(f"unknown generation_kwargs {sorted(unknown)}")
    for key, value in overrides.items():
        setattr(config, key, value)
    if num_samples > 1 and not config.do_sample:
        raise ValueError("num_samples > 1 needs sampling: greedy rollouts of one input are all the same")
    if num_samples > 1 and config.top_k == 1:
        raise ValueError(_one_token_sampling(config, overrides, num_samples))
    if config.max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be positive, got {config.max_new_tokens}")
    if not config.do_sample:
        for key in _SAMPLING_ONLY:
            if key not in overrides:
                setattr(config, key, None)
    for key, neutral in _REFUSED_FIELDS.items():
        if getattr(config, key, None) not in neutral:
            raise ValueError(f"generation config field {key}={getattr(config, key)!r} is not supported by ume-plugins")
    config.output_hidden_states = False
    config.return_dict_in_generate = False
    config.num_return_sequences = 1
    return config


def _one_token_sampling(config: GenerationConfig, overrides: dict[str, Any], num_samples: int) -> str:
    """Why ``top_k=1`` is refused for several rollouts, naming the checkpoint's other sampling fields.

    As for ``generate``, the checkpoint's sampling fields apply unless overridden; the published
    checkpoints carry Qwen2-VL-Instruct's near-greedy ones, which a user asking for k samples rarely means.
    """
    source = "generation_kwargs" if "top_k" in overrides else "the checkpoint's generation config"
    message = (
        f"num_samples={num_samples} with top_k=1 (from {source}) keeps one token per step, so every rollout "
        "of an input would be the same; pass generation_kwargs={'top_k': 0} (no top-k) or a larger top_k"
    )
    defaults = GenerationConfig()
    inherited = [
        f"{key}={getattr(config, key)!r}"
        for key in _SAMPLING_ONLY
        if key != "top_k" and key not in overrides and getattr(config, key, None) != getattr(defaults, key, None)
    ]
    if inherited:
        message += f". The checkpoint's generation config also sets {', '.join(inherited)} (override them too)"
    return message


def order_fields(config: GenerationConfig) -> list[str]:
    """The fields of ``config`` set to something that reads each row's token order."""
    return [key for key, neutral in ORDER_FIELDS.items() if getattr(config, key, None) not in neutral]
