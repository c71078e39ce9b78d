"""Generative mode: reasoning rollouts and the hidden state at ``<gen_emb>``.

The model writes ``<think>...</think><answer>...</answer><gen_emb><|im_end|>``; the embedding is
the last decoder layer's output (after the final norm) at the step whose input is ``<gen_emb>``.

Batched ``generate`` runs with left padding and the KV cache. A forward hook on the final norm
keeps only the newest position's state, and a logits processor (which sees the ids fed at that
step) copies it for rows whose input was ``<gen_emb>``: memory holds one ``[batch, hidden]`` row per
step instead of every layer of every step. A row stops as soon as its state is captured.

Rows whose ``<gen_emb>`` was not captured (it came as the very last token of the budget, or never
came) get it from one forward pass over prompt + reasoning, the maintainers' equivalent
definition; if it never came, ``<gen_emb>`` is appended after the truncated reasoning and the row
is flagged as forced (or an error is raised, per ``on_missing``).
"""

from __future__ import annotations

import copy
import logging
from dataclasses import dataclass
from typing import Any, Literal

import torch
from transformers import GenerationConfig, LogitsProcessor, LogitsProcessorList, StoppingCriteria, StoppingCriteriaList

logger = logging.getLogger(__name__)

OnMissing = Literal["force", "raise"]
_FORBIDDEN_GENERATION_KWARGS = {
    "output_hidden_states": "the <gen_emb> state is captured without keeping per-step hidden states",
    "return_dict_in_generate": "the rollout output is built by ume-plugins",
    "num_beams": "beam search is not supported; use num_samples for several rollouts",
    "num_return_sequences": "use num_samples for several rollouts per input",
}
_SAMPLING_ONLY = ("temperature", "top_p", "top_k", "min_p", "typical_p", "epsilon_cutoff", "eta_cutoff")
_VISUAL_KEYS = (
    ("pixel_values", "image_grid_thw", "images_per_row"),
    ("pixel_values_videos", "video_grid_thw", "videos_per_row"),
)


class GenEmbMissingError(RuntimeError):
    """Raised with ``on_missing="raise"`` when rollouts end without ``<gen_emb>``."""


@dataclass
class Rollout:
    """What generative mode produced for a batch.

    Attributes:
        states: ``[batch, hidden]`` float32 last-layer states at ``<gen_emb>`` (not normalised).
        generated_ids: ``[batch, steps]`` reasoning ids up to and including ``<gen_emb>``,
            right-padded with the pad id.
        forced: ``[batch]`` True where ``<gen_emb>`` was appended because the model did not write it
            within the token budget.
        disc_states: ``[batch, hidden]`` states at ``<disc_emb>`` from the same prefill, when asked.
    """

    states: torch.Tensor
    generated_ids: torch.Tensor
    forced: torch.Tensor
    disc_states: torch.Tensor | None = None


def build_generation_config(
    base: GenerationConfig, max_new_tokens: int, pad_token_id: int, overrides: dict[str, Any]
) -> GenerationConfig:
    """The checkpoint's generation config, made greedy with our token budget, then the user's overrides.

    Raises:
        ValueError: An override that would break embedding capture, or that ``generate`` does not know.
    """
    for key, why in _FORBIDDEN_GENERATION_KWARGS.items():
        value = overrides.get(key)
        if value is True or (type(value) is int and value > 1):
            raise ValueError(f"generation_kwargs[{key!r}] is not supported: {why}")
    config = copy.deepcopy(base)
    config.max_new_tokens = max_new_tokens
    config.do_sample = False
    if config.pad_token_id is None:
        config.pad_token_id = pad_token_id
    unknown = {key: value for key, value in overrides.items() if not hasattr(config, key)}
    if unknown:
        raise ValueError(f"unknown generation_kwargs {sorted(unknown)}")
    for key, value in overrides.items():
        setattr(config, key, value)
    if not config.do_sample:
        for key in _SAMPLING_ONLY:
            if key not in overrides:
                setattr(config, key, None)
    config.output_hidden_states = False
    config.return_dict_in_generate = False
    config.num_return_sequences = 1
    return config


class _GenEmbCapture(LogitsProcessor):
    """Copies the final-norm state of rows whose input token at this step is ``<gen_emb>``."""

    def __init__(self, prompt_len: int, gen_emb_id: int, batch: int, hidden: int, disc_positions: torch.Tensor | None):
        self.prompt_len = prompt_len
        self.gen_emb_id = gen_emb_id
        self.disc_positions = disc_positions
        self.disc_states: torch.Tensor | None = None
        self.states = torch.zeros(batch, hidden, dtype=torch.float32)
        self.found = torch.zeros(batch, dtype=torch.bool)
        self._newest: torch.Tensor | None = None

    def hook(self, module: torch.nn.Module, args: tuple, output: torch.Tensor) -> None:
        hidden = output[0] if isinstance(output, tuple) else output
        if self.disc_positions is not None and self.disc_states is None:
            rows = torch.arange(hidden.shape[0], device=hidden.device)
            self.disc_states = hidden[rows, self.disc_positions.to(hidden.device)].float().cpu()
        self._newest = hidden[:, -1].detach()

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        # Called right after the forward pass whose input was input_ids[:, -1]; scores pass through.
        if input_ids.shape[1] > self.prompt_len and self._newest is not None:
            hit = (input_ids[:, -1] == self.gen_emb_id).cpu() & ~self.found
            if hit.any():
                self.states[hit] = self._newest[hit.to(self._newest.device)].float().cpu()
                self.found |= hit
        return scores


class _StopWhenCaptured(StoppingCriteria):
    def __init__(self, capture: _GenEmbCapture):
        self.capture = capture

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor, **kwargs: Any) -> torch.BoolTensor:
        return self.capture.found.to(input_ids.device)


def last_position(input_ids: torch.Tensor, token_id: int) -> torch.Tensor:
    """Per row, the index of the last occurrence of ``token_id`` (which must occur)."""
    positions = torch.arange(input_ids.shape[1], device=input_ids.device).expand_as(input_ids)
    return torch.where(input_ids == token_id, positions, -1).max(dim=1).values


def final_norm(model: torch.nn.Module) -> torch.nn.Module:
    """The decoder's final norm, whose output is the "last layer hidden state"."""
    return model.model.language_model.norm


def rollout(
    model: torch.nn.Module,
    features: dict[str, torch.Tensor],
    *,
    gen_emb_id: int,
    disc_emb_id: int,
    eos_token_ids: set[int],
    generation_config: GenerationConfig,
    generation_kwargs: dict[str, Any],
    on_missing: OnMissing,
    with_disc: bool = False,
) -> Rollout:
    """Generate reasoning for a left-padded batch and read each row's ``<gen_emb>`` state.

    Args:
        model: A ``Qwen2VLForConditionalGeneration``.
        features: Processor outputs for the full prompt (plus ``images_per_row``/``videos_per_row``).
        gen_emb_id: Id of ``<gen_emb>``.
        disc_emb_id: Id of ``<disc_emb>``.
        eos_token_ids: Ids that end a rollout.
        generation_config: From :func:`build_generation_config`.
        generation_kwargs: Only ``logits_processor`` / ``stopping_criteria`` lists are read here.
        on_missing: ``"force"`` appends ``<gen_emb>`` to rollouts that lack it (flagged);
            ``"raise"`` raises :class:`GenEmbMissingError`.
        with_disc: Also return the ``<disc_emb>`` states of the prefill.

    Returns:
        The rollout states, ids and flags.
    """
    input_ids = features["input_ids"]
    batch, prompt_len = input_ids.shape
    hidden = model.config.text_config.hidden_size
    disc_positions = last_position(input_ids, disc_emb_id) if with_disc else None
    capture = _GenEmbCapture(prompt_len, gen_emb_id, batch, hidden, disc_positions)
    logits_processor = LogitsProcessorList([*generation_kwargs.get("logits_processor", []), capture])
    stopping = StoppingCriteriaList([*generation_kwargs.get("stopping_criteria", []), _StopWhenCaptured(capture)])
    model_inputs = {key: value for key, value in features.items() if key not in ("images_per_row", "videos_per_row")}
    handle = final_norm(model).register_forward_hook(capture.hook)
    try:
        sequences = model.generate(
            **model_inputs,
            generation_config=generation_config,
            logits_processor=logits_processor,
            stopping_criteria=stopping,
        )
    finally:
        handle.remove()
    generated = sequences[:, prompt_len:].cpu()
    states, found = capture.states, capture.found.clone()
    kept, forced = _trim_rollouts(generated, gen_emb_id, eos_token_ids)
    missing = [row for row in range(batch) if not found[row]]
    if missing and on_missing == "raise" and forced.any():
        rows = [row for row in missing if forced[row]]
        raise GenEmbMissingError(
            f"batch rows {rows} did not write <gen_emb> within {generation_config.max_new_tokens} new tokens; "
            "raise max_new_tokens or use on_missing_gen_emb='force'"
        )
    if missing:
        if forced.any():
            logger.warning(
                "%d of %d inputs did not write <gen_emb> within %d new tokens: <gen_emb> was appended after "
                "their truncated reasoning (flagged as gen_emb_forced).",
                int(forced.sum()),
                batch,
                generation_config.max_new_tokens,
            )
        continuations = [kept[row] + ([gen_emb_id] if forced[row] else []) for row in missing]
        states[missing] = states_after(model, select_rows(features, missing), continuations)
    pad_id = generation_config.pad_token_id
    width = max((len(ids) for ids in kept), default=0)
    generated_ids = torch.full((batch, width), pad_id, dtype=torch.long)
    for row, ids in enumerate(kept):
        generated_ids[row, : len(ids)] = torch.tensor(ids, dtype=torch.long)
    return Rollout(states=states, generated_ids=generated_ids, forced=forced, disc_states=capture.disc_states)


def _trim_rollouts(
    generated: torch.Tensor, gen_emb_id: int, eos_token_ids: set[int]
) -> tuple[list[list[int]], torch.Tensor]:
    """Per row, the reasoning up to and including the first ``<gen_emb>`` (else up to EOS)."""
    kept: list[list[int]] = []
    forced = torch.zeros(generated.shape[0], dtype=torch.bool)
    for row, ids in enumerate(generated.tolist()):
        if gen_emb_id in ids:
            kept.append(ids[: ids.index(gen_emb_id) + 1])
            continue
        end = next((i for i, token in enumerate(ids) if token in eos_token_ids), len(ids))
        kept.append(ids[:end])
        forced[row] = True
    return kept, forced


def select_rows(features: dict[str, torch.Tensor], rows: list[int]) -> dict[str, torch.Tensor]:
    """The features of some batch rows, visual patches included."""
    selected = {
        key: features[key][rows]
        for key in ("input_ids", "attention_mask", "mm_token_type_ids")
        if features.get(key) is not None
    }
    for pixels_key, grid_key, count_key in _VISUAL_KEYS:
        if features.get(pixels_key) is None:
            continue
        grids, counts = features[grid_key], features[count_key].tolist()
        first_item = [sum(counts[:row]) for row in range(len(counts))]
        items = [first_item[row] + offset for row in rows for offset in range(counts[row])]
        patches = grids.prod(dim=1).tolist()
        first_patch = [sum(patches[:item]) for item in range(len(patches))]
        if items:
            selected[pixels_key] = torch.cat(
                [features[pixels_key][first_patch[item] : first_patch[item] + patches[item]] for item in items]
            )
            selected[grid_key] = grids[items]
        selected[count_key] = features[count_key][rows]
    return selected


def states_after(
    model: torch.nn.Module, features: dict[str, torch.Tensor], continuations: list[list[int]]
) -> torch.Tensor:
    """One forward pass over each prompt followed by its continuation; the last position's state.

    Args:
        model: A ``Qwen2VLForConditionalGeneration``.
        features: Left-padded prompt features of the rows (as from :func:`select_rows`).
        continuations: Per row, the ids that follow the prompt, ending with ``<gen_emb>``.

    Returns:
        ``[rows, hidden]`` float32 states at each sequence's last token.
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
    inputs = {
        key: value for key, value in features.items() if key.startswith(("pixel_values", "image_grid", "video_grid"))
    }
    if type_ids is not None:
        inputs["mm_token_type_ids"] = type_ids
    output = model.model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False, **inputs)
    return output.last_hidden_state[:, -1].float().cpu()
