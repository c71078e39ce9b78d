"""Discriminative mode: one forward pass; the embedding is the last-layer state at ``<disc_emb>``."""

from __future__ import annotations

import torch

from ume_plugins.engine.batching import last_position, length_groups, model_inputs, sub_batch


def disc_states(model: torch.nn.Module, features: dict[str, torch.Tensor], disc_emb_id: int) -> torch.Tensor:
    """``[batch, hidden]`` states at each row's last ``<disc_emb>``, rows run in groups of similar length.

    Args:
        model: A ``Qwen2VLForConditionalGeneration``.
        features: Left-padded processor outputs with per-row image/video counts.
        disc_emb_id: Id of ``<disc_emb>``.
    """
    lengths = features["attention_mask"].sum(dim=1).tolist()
    groups = length_groups(lengths)
    if len(groups) == 1:
        return _group_states(model, features, disc_emb_id)
    states = torch.empty(len(lengths), model.config.text_config.hidden_size, dtype=model.dtype, device=model.device)
    for rows in groups:
        states[rows] = _group_states(model, sub_batch(features, rows), disc_emb_id)
    return states


def _group_states(model: torch.nn.Module, features: dict[str, torch.Tensor], disc_emb_id: int) -> torch.Tensor:
    inputs = model_inputs(features)
    hidden = model.model(**inputs, use_cache=False).last_hidden_state
    rows = torch.arange(hidden.shape[0], device=hidden.device)
    return hidden[rows, last_position(inputs["input_ids"], disc_emb_id)]
