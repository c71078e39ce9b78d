"""Generative mode: reasoning rollouts and the hidden state at ``<gen_emb>``.

The model writes ``<think>...</think><answer>...</answer><gen_emb><|im_end|>``; the embedding is
the last decoder layer's output (after the final norm) at the step whose input is ``<gen_emb>``.

The engine is a KV-cached decoding loop over a left-padded batch:

- One prefill over the prompts (vision tower included); its ``<disc_emb>`` states come free for
  ``mode="both"``. With ``num_samples=k`` the prefill runs once and its cache is repeated k times.
- Each step feeds one token per live row. When a row's input is ``<gen_emb>``, the step's
  final-norm output IS the embedding: it is copied (``[hidden]`` floats) and the row leaves the
  batch, its KV cache dropped with it, so finished rows cost nothing (early exit per sequence).
- A rollout that ends without ``<gen_emb>`` (EOS, the token budget, or a user stopping criterion)
  is fed ``<gen_emb>`` after its reasoning through the same cache and flagged as forced, which is
  the maintainers' "one forward over prompt + reasoning + <gen_emb>" without a second pass; with
  ``on_missing="raise"`` it raises :class:`GenEmbMissingError` instead.

Memory is the KV cache plus the ids: nothing is kept per step and layer. Scores go through the
same logits processors and warpers ``generate`` would build from the generation config; sampling
draws each rollout from its own seeded stream (:mod:`ume_plugins.sampling`), so a seeded rollout
does not depend on its batch-mates.
"""

from __future__ import annotations

import copy
import logging
from dataclasses import dataclass
from typing import Any, Literal

import torch
from transformers import GenerationConfig, LogitsProcessor, LogitsProcessorList, StoppingCriteria, StoppingCriteriaList

from ume_plugins.batching import model_inputs
from ume_plugins.sampling import SeededSampler, rollout_seed

logger = logging.getLogger(__name__)

OnMissing = Literal["force", "raise"]
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
    "cache_implementation": ((None,), "the engine manages its own dynamic KV cache"),
    "prompt_lookup_num_tokens": ((None,), "speculative decoding is not supported"),
    "guidance_scale": ((None, 1, 1.0), "classifier-free guidance is not supported"),
}
_SAMPLING_ONLY = ("temperature", "top_p", "top_k", "min_p", "typical_p", "epsilon_cutoff", "eta_cutoff")


class GenEmbMissingError(RuntimeError):
    """Raised with ``on_missing="raise"`` when rollouts end without ``<gen_emb>``."""


@dataclass
class Rollout:
    """What generative mode produced for a batch of ``batch`` inputs with ``k`` rollouts each.

    Attributes:
        states: ``[batch, k, hidden]`` float32 last-layer states at ``<gen_emb>`` (not normalised).
        generated_ids: ``[batch, k, steps]`` reasoning ids up to and including ``<gen_emb>`` (a
            forced ``<gen_emb>`` is not included), right-padded with the pad id.
        forced: ``[batch, k]`` True where ``<gen_emb>`` was appended because the rollout ended
            without writing it (EOS, token budget or a stopping criterion).
        disc_states: ``[batch, hidden]`` states at ``<disc_emb>`` from the same prefill, when asked.
    """

    states: torch.Tensor
    generated_ids: torch.Tensor
    forced: torch.Tensor
    disc_states: torch.Tensor | None = None


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
        ValueError: An override that would break embedding capture or that the engine does not
            honour, one that ``generate`` does not know, or ``num_samples > 1`` with greedy decoding.
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
    if config.max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be positive, got {config.max_new_tokens}")
    if not config.do_sample:
        for key in _SAMPLING_ONLY:
            if key not in overrides:
                setattr(config, key, None)
    config.output_hidden_states = False
    config.return_dict_in_generate = False
    config.num_return_sequences = 1
    return config


def last_position(input_ids: torch.Tensor, token_id: int) -> torch.Tensor:
    """Per row, the index of the last occurrence of ``token_id`` (which must occur)."""
    positions = torch.arange(input_ids.shape[1], device=input_ids.device).expand_as(input_ids)
    return torch.where(input_ids == token_id, positions, -1).max(dim=1).values


def prompt_positions(model: torch.nn.Module, inputs: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """3-D (M-RoPE) positions of left-padded prompts, and each row's offset for the tokens that follow.

    The same positions ``generate`` uses: a token after the prompt sits at (real tokens before it)
    plus the row's offset.

    Returns:
        ``[3, batch, prompt_len]`` position ids and ``[batch, 1]`` offsets.
    """
    input_ids, mask = inputs["input_ids"], inputs["attention_mask"]
    if inputs.get("image_grid_thw") is not None or inputs.get("video_grid_thw") is not None:
        return model.model.get_rope_index(
            input_ids,
            mm_token_type_ids=inputs["mm_token_type_ids"],
            image_grid_thw=inputs.get("image_grid_thw"),
            video_grid_thw=inputs.get("video_grid_thw"),
            attention_mask=mask,
        )
    text = (mask.long().cumsum(-1) - 1).masked_fill(mask == 0, 1)
    return text.unsqueeze(0).expand(3, -1, -1), torch.zeros(input_ids.shape[0], 1, dtype=torch.long)


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
    num_samples: int = 1,
    seed: int | None = None,
) -> Rollout:
    """Generate reasoning for a left-padded batch and read each rollout's ``<gen_emb>`` state.

    Args:
        model: A ``Qwen2VLForConditionalGeneration``.
        features: Processor outputs for the full prompt (plus ``images_per_row``/``videos_per_row``).
        gen_emb_id: Id of ``<gen_emb>``.
        disc_emb_id: Id of ``<disc_emb>``.
        eos_token_ids: Ids that end a rollout.
        generation_config: From :func:`build_generation_config`.
        generation_kwargs: Only ``logits_processor`` / ``stopping_criteria`` lists are read here.
        on_missing: ``"force"`` feeds ``<gen_emb>`` after rollouts that lack it (flagged);
            ``"raise"`` raises :class:`GenEmbMissingError`.
        with_disc: Also return the ``<disc_emb>`` states of the prefill.
        num_samples: Rollouts per input (sampled when the config samples).
        seed: Seed of the sampled rollouts; None draws one from torch's global generator, so
            ``torch.manual_seed`` also makes a call reproducible.

    Returns:
        The rollout states, ids and flags.

    Raises:
        GenEmbMissingError: A rollout ended without ``<gen_emb>`` and ``on_missing="raise"``.
    """
    inputs = model_inputs(features)
    input_ids = inputs["input_ids"]
    batch = input_ids.shape[0]
    positions, offsets = prompt_positions(model, inputs)
    prefill = model.model(**inputs, position_ids=positions, use_cache=True)
    disc_states = None
    if with_disc:
        rows = torch.arange(batch, device=input_ids.device)
        disc_states = prefill.last_hidden_state[rows, last_position(input_ids, disc_emb_id)].float().cpu()
    logits = model.lm_head(prefill.last_hidden_state[:, -1]).float()
    cache = prefill.past_key_values
    del prefill  # frees the prompts' hidden states: only the KV cache lives on
    loop = _DecodeLoop(
        model,
        cache,
        input_ids=input_ids.repeat_interleave(num_samples, dim=0),
        attention_mask=inputs["attention_mask"].repeat_interleave(num_samples, dim=0),
        offsets=offsets.to(input_ids.device).repeat_interleave(num_samples, dim=0),
        gen_emb_id=gen_emb_id,
        eos_token_ids=eos_token_ids,
        config=generation_config,
        user_processors=generation_kwargs.get("logits_processor", []),
        user_stopping=generation_kwargs.get("stopping_criteria", []),
        on_missing=on_missing,
        num_samples=num_samples,
        seed=seed,
    )
    if num_samples > 1:
        cache.batch_repeat_interleave(num_samples)
        logits = logits.repeat_interleave(num_samples, dim=0)
    # The flags go back to the caller, which warns once per call (not per batch).
    states, generated, forced = loop.run(logits)
    width = max((len(ids) for ids in generated), default=0)
    generated_ids = torch.full((len(generated), width), generation_config.pad_token_id, dtype=torch.long)
    for row, ids in enumerate(generated):
        generated_ids[row, : len(ids)] = torch.tensor(ids, dtype=torch.long)
    return Rollout(
        states=states.view(batch, num_samples, -1),
        generated_ids=generated_ids.view(batch, num_samples, width),
        forced=forced.view(batch, num_samples),
        disc_states=disc_states,
    )


class _DecodeLoop:
    """The decoding state of the live rows; rows leave as soon as their ``<gen_emb>`` state is read."""

    def __init__(
        self,
        model: torch.nn.Module,
        cache: Any,
        *,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        offsets: torch.Tensor,
        gen_emb_id: int,
        eos_token_ids: set[int],
        config: GenerationConfig,
        user_processors: list,
        user_stopping: list,
        on_missing: OnMissing,
        num_samples: int,
        seed: int | None,
    ):
        self.model, self.cache, self.config = model, cache, config
        self.gen_emb_id, self.on_missing, self.num_samples = gen_emb_id, on_missing, num_samples
        device = input_ids.device
        rows, prompt_len = input_ids.shape
        self.prompt_len = prompt_len
        self.ids, self.mask, self.offsets = input_ids, attention_mask, offsets
        self.lengths = attention_mask.sum(dim=-1)
        self.eos = torch.tensor(sorted(eos_token_ids), dtype=torch.long, device=device)
        self.live = torch.arange(rows)  # output row of each live row
        self.closing = torch.zeros(rows, dtype=torch.bool, device=device)  # next input is a forced <gen_emb>
        self.states = torch.zeros(rows, model.config.text_config.hidden_size, dtype=torch.float32)
        self.forced = torch.zeros(rows, dtype=torch.bool)
        self.generated: list[list[int]] = [[] for _ in range(rows)]
        # User callables may index rows or keep per-row state: they see every row, as in generate.
        self.all_ids = input_ids if user_processors or user_stopping else None
        self.pad_id = config.pad_token_id
        user_processors = [_WholeBatchProcessor(processor, self) for processor in user_processors]
        self.processors = _logits_processors(model, config, input_ids, attention_mask, user_processors)
        self.stopping = StoppingCriteriaList([_WholeBatchStopping(criterion, self) for criterion in user_stopping])
        self.sampler = None
        if config.do_sample:
            if seed is None:
                seed = int(torch.randint(2**62, (1,)).item())
            prompts = [ids[mask.bool()].tolist() for ids, mask in zip(input_ids, attention_mask, strict=True)]
            self.sampler = SeededSampler([rollout_seed(seed, prompts[row], row % num_samples) for row in range(rows)])

    def run(self, logits: torch.Tensor) -> tuple[torch.Tensor, list[list[int]], torch.Tensor]:
        """Decode until every row's ``<gen_emb>`` state is read; returns states, reasoning ids, forced flags."""
        step = 0
        while len(self.live):
            tokens, final, close_next = self._choose(logits, step)
            hidden = self._feed(tokens)
            self._read(hidden, final)
            keep = ~final
            self.closing = close_next
            if not keep.all():
                self._drop(keep)
                hidden = hidden[keep]
            if len(self.live) and not self.closing.all():
                logits = self.model.lm_head(hidden).float()
            step += 1
        return self.states, self.generated, self.forced

    def _choose(self, logits: torch.Tensor, step: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The token each row feeds next, which rows feed ``<gen_emb>`` now, and which must next step."""
        free = ~self.closing
        gen_emb = torch.full_like(self.lengths, self.gen_emb_id)
        if not free.any():
            return gen_emb, self.closing.clone(), torch.zeros_like(self.closing)
        scores = self.processors(self.ids, logits)
        tokens = self.sampler(scores, step) if self.sampler is not None else scores.argmax(dim=-1)
        wrote_gen_emb = free & (tokens == self.gen_emb_id)
        ended = free & torch.isin(tokens, self.eos)
        # A rollout that ended without <gen_emb> is fed <gen_emb> instead of EOS.
        tokens = torch.where(self.closing | ended, gen_emb, tokens)
        final = self.closing | wrote_gen_emb | ended
        open_rows = free & ~final
        close_next = torch.zeros_like(final)
        if step + 1 >= self.config.max_new_tokens:
            close_next = open_rows
        elif len(self.stopping):
            stopped = self.stopping(torch.cat([self.ids, tokens[:, None]], dim=-1), scores)
            close_next = open_rows & stopped.to(open_rows.device)
        self._flag_forced(ended | close_next)
        return tokens, final, close_next

    def _flag_forced(self, rows: torch.Tensor) -> None:
        if not rows.any():
            return
        outputs = self.live[rows.cpu()]
        if self.on_missing == "raise":
            inputs = sorted({int(row) // self.num_samples for row in outputs})
            raise GenEmbMissingError(
                f"batch rows {inputs} did not write <gen_emb> within {self.config.max_new_tokens} new tokens; "
                "raise max_new_tokens or use on_missing_gen_emb='force'"
            )
        self.forced[outputs] = True

    def _feed(self, tokens: torch.Tensor) -> torch.Tensor:
        """One cached decoder step; returns the final-norm state ``[rows, hidden]`` of the fed tokens."""
        self.ids = torch.cat([self.ids, tokens[:, None]], dim=-1)
        if self.all_ids is not None:
            self.all_ids = self.whole_batch(self.ids)
        self.mask = torch.cat([self.mask, torch.ones_like(self.mask[:, :1])], dim=-1)
        self.lengths = self.lengths + 1
        position = (self.lengths[:, None] - 1 + self.offsets).unsqueeze(0).expand(3, -1, -1)
        output = self.model.model.language_model(
            input_ids=tokens[:, None],
            attention_mask=self.mask,
            position_ids=position,
            past_key_values=self.cache,
            use_cache=True,
        )
        return output.last_hidden_state[:, -1]

    def _read(self, hidden: torch.Tensor, final: torch.Tensor) -> None:
        """Keep the state and the reasoning ids of the rows whose input was ``<gen_emb>``."""
        if not final.any():
            return
        outputs = self.live[final.cpu()]
        self.states[outputs] = hidden[final].float().cpu()
        for output, ids in zip(outputs.tolist(), self.ids[final, self.prompt_len :].tolist(), strict=True):
            # A forced <gen_emb> was fed, not written: it is not part of the reasoning.
            self.generated[output] = ids[:-1] if self.forced[output] else ids

    def whole_batch(self, live_ids: torch.Tensor) -> torch.Tensor:
        """``live_ids`` placed among every row of the batch, finished rows padded as ``generate`` pads them."""
        width = live_ids.shape[1]
        full = torch.full((len(self.all_ids), width), self.pad_id, dtype=live_ids.dtype, device=live_ids.device)
        full[:, : self.all_ids.shape[1]] = self.all_ids[:, :width]
        full[self.live.to(full.device)] = live_ids
        return full

    def _drop(self, keep: torch.Tensor) -> None:
        """Remove finished rows from every per-row tensor and from the KV cache."""
        rows = keep.nonzero().flatten()
        self.cache.batch_select_indices(rows)
        self.ids, self.mask, self.lengths = self.ids[rows], self.mask[rows], self.lengths[rows]
        self.offsets, self.closing = self.offsets[rows], self.closing[rows]
        self.live = self.live[rows.cpu()]
        if self.sampler is not None:
            self.sampler.keep(rows)


class _WholeBatchProcessor(LogitsProcessor):
    """A user's logits processor, called with every row of the batch; finished rows get zero scores."""

    def __init__(self, inner: Any, loop: _DecodeLoop) -> None:
        self.inner, self.loop = inner, loop

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        live = self.loop.live.to(scores.device)
        full = scores.new_zeros((len(self.loop.all_ids), scores.shape[-1]))
        full[live] = scores
        return self.inner(self.loop.whole_batch(input_ids), full)[live]


class _WholeBatchStopping(StoppingCriteria):
    """A user's stopping criterion, called with every row of the batch."""

    def __init__(self, inner: Any, loop: _DecodeLoop) -> None:
        self.inner, self.loop = inner, loop

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor, **kwargs: Any) -> torch.BoolTensor:
        live = self.loop.live.to(input_ids.device)
        full = scores.new_zeros((len(self.loop.all_ids), scores.shape[-1]))
        full[live] = scores
        stopped = self.inner(self.loop.whole_batch(input_ids), full, **kwargs)
        if isinstance(stopped, bool):
            return torch.full((len(live),), stopped, dtype=torch.bool, device=input_ids.device)
        return stopped.to(input_ids.device)[live]


def _logits_processors(
    model: torch.nn.Module,
    config: GenerationConfig,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    user_processors: list,
) -> LogitsProcessorList:
    """The processors and warpers ``generate`` would build from ``config``, with the user's merged in.

    transformers' own builder is used so every generation-config field (repetition penalty, minimum
    length, bad words, temperature, top-k/p, ...) means exactly what it means for ``generate``.
    """
    config = copy.deepcopy(config)
    model._prepare_special_tokens(config, kwargs_has_attention_mask=True, device=input_ids.device)
    return model._get_logits_processor(
        generation_config=config,
        input_ids_seq_length=input_ids.shape[1],
        encoder_input_ids=input_ids,
        logits_processor=LogitsProcessorList(user_processors),
        device=input_ids.device,
        model_kwargs={"attention_mask": attention_mask},
    )
