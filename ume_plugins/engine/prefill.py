"""The slot engine's prefill: prompts run through the whole model in length groups, their KV rows kept.

A prefilled input waits in a :class:`Prompt` until its rollouts take slots; its KV rows are then
copied into each slot's region (:mod:`ume_plugins.engine.slots`). Inputs of similar length are
prefilled together (:func:`~ume_plugins.engine.batching.length_groups`), the vision tower included.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from ume_plugins.engine.batching import last_position, length_groups, model_inputs, sub_batch
from ume_plugins.engine.hf_model import layer_kv, prefill


@dataclass
class Prompt:
    """A prefilled input waiting for slots: its KV rows, first logits and how many rollouts still need it."""

    keys: list[torch.Tensor]
    values: list[torch.Tensor]
    logits: torch.Tensor
    offset: torch.Tensor
    remaining: int


def prefill_prompts(
    model: torch.nn.Module,
    features: dict[str, Any],
    prompt_ids: list[list[int]],
    inputs: list[int],
    rollouts: int,
    disc: torch.Tensor | None = None,
    disc_emb_id: int | None = None,
) -> dict[int, Prompt]:
    """Prefill ``inputs`` (indices into the batch) in groups of similar length.

    Args:
        model: A ``Qwen2VLForConditionalGeneration``.
        features: The batch's left-padded processor outputs.
        prompt_ids: Each input's real prompt tokens.
        inputs: The inputs to prefill.
        rollouts: Rollouts each input feeds (its prompt is kept until they all took it).
        disc: ``[inputs, hidden]`` float32 buffer for the ``<disc_emb>`` states, or None.
        disc_emb_id: Id of ``<disc_emb>`` (with ``disc``).

    Returns:
        Each prefilled input's :class:`Prompt`, by index.
    """
    prompts: dict[int, Prompt] = {}
    lengths = [len(prompt_ids[index]) for index in inputs]
    layers = model.config.text_config.num_hidden_layers
    for group in length_groups(lengths):
        rows = [inputs[member] for member in group]
        batch = model_inputs(sub_batch(features, rows))
        hidden, cache, offsets = prefill(model, batch)
        logits = model.lm_head(hidden[:, -1]).float()
        if disc is not None:
            positions = last_position(batch["input_ids"], disc_emb_id)
            disc[rows] = hidden[torch.arange(len(rows), device=hidden.device), positions].float()
        width = hidden.shape[1]
        del hidden
        kv = [layer_kv(cache, layer) for layer in range(layers)]
        for member, index in enumerate(rows):
            start = width - len(prompt_ids[index])
            prompts[index] = Prompt(
                keys=[keys[member, :, start:] for keys, _ in kv],
                values=[values[member, :, start:] for _, values in kv],
                logits=logits[member],
                offset=offsets[member, 0],
                remaining=rollouts,
            )
    return prompts
