"""One forward pass over prompt + continuation: the maintainers' definition of the ``<gen_emb>`` state.

UME-R1's maintainers (issue #11) and its training code read the embedding from one forward pass over
the prompt followed by the generated ids up to and including ``<gen_emb>``. The built-in decoders
never need this (they capture the state while decoding); the two-phase accelerated backend does: a
serving engine writes the reasoning, this reads the state.
"""

from __future__ import annotations

import torch

from ume_plugins.engine.batching import last_position, visual_inputs


def states_after(
    model: torch.nn.Module,
    features: dict[str, torch.Tensor],
    continuations: list[list[int]],
    *,
    disc_emb_id: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """One forward pass over each prompt followed by its continuation; the last position's state.

    Args:
        model: A ``Qwen2VLForConditionalGeneration``.
        features: Left-padded prompt features of the rows (see :func:`ume_plugins.engine.batching.select_rows`).
        continuations: Per row, the ids that follow the prompt, ending with ``<gen_emb>``.
        disc_emb_id: When given, also read each row's state at its last ``<disc_emb>`` of the prompt.

    Returns:
        ``[rows, hidden]`` float32 states at each sequence's last token, and at ``<disc_emb>`` (or None),
        on the model's device.
    """
    prompt_ids, prompt_mask = features["input_ids"], features["attention_mask"]
    device = prompt_ids.device
    token_types = features.get("mm_token_type_ids")
    width = max(int(mask.sum()) + len(extra) for mask, extra in zip(prompt_mask, continuations, strict=True))
    input_ids = torch.zeros(len(continuations), width, dtype=prompt_ids.dtype, device=device)
    attention_mask = torch.zeros_like(input_ids)
    type_ids = torch.zeros_like(input_ids) if token_types is not None else None
    for row, extra in enumerate(continuations):
        keep = prompt_mask[row].bool()
        sequence = torch.cat([prompt_ids[row][keep], torch.tensor(extra, dtype=prompt_ids.dtype, device=device)])
        input_ids[row, width - len(sequence) :] = sequence
        attention_mask[row, width - len(sequence) :] = 1
        if type_ids is not None:
            type_ids[row, width - len(sequence) : width - len(extra)] = token_types[row][keep]
    inputs = visual_inputs(features)
    if type_ids is not None:
        inputs["mm_token_type_ids"] = type_ids
    output = model.model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False, **inputs)
    hidden = output.last_hidden_state
    disc = None
    if disc_emb_id is not None:
        rows = torch.arange(len(continuations), device=device)
        disc = hidden[rows, last_position(input_ids, disc_emb_id)].float()
    return hidden[:, -1].float(), disc
