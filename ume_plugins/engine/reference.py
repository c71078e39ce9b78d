"""The reference decoder: a KV-cached loop over a left-padded batch, rows leaving as they finish.

This is the decoder ``generate`` users would recognise, kept as the reference the slot engine
(:mod:`ume_plugins.engine.slots`) is tested against, and run where only it gives ``generate``'s
semantics: user ``logits_processor`` / ``stopping_criteria`` hooks (they see every row of the
batch, in input order, at one step) and generation-config fields that read each row's token order.

- One prefill over the prompts (vision tower included); its ``<disc_emb>`` states come free for
  ``mode="both"``. With ``num_samples=k`` the prefill runs once and its cache is repeated k times.
- Each step feeds one token per live row. When a row's input is ``<gen_emb>``, the step's
  final-norm output IS the embedding: it is copied (``[hidden]`` floats) and the row leaves the
  batch, its KV cache dropped with it, so finished rows cost nothing (early exit per sequence).
- A rollout that ends without ``<gen_emb>`` (EOS, the token budget, or a user stopping criterion)
  is fed ``<gen_emb>`` after its reasoning through the same cache and flagged as forced; with
  ``on_missing="raise"`` it raises :class:`~ume_plugins.engine.base.GenEmbMissingError` instead.

Memory is the KV cache plus the ids: nothing is kept per step and layer.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from transformers import GenerationConfig, LogitsProcessor, StoppingCriteria, StoppingCriteriaList

from ume_plugins.engine.base import OnMissing, Rollout, assemble, eos_token_ids, missing_gen_emb_error
from ume_plugins.engine.batching import last_position, model_inputs
from ume_plugins.engine.hf_model import cache_keyword, prefill
from ume_plugins.engine.processors import ScoreProcessors, own_ids
from ume_plugins.engine.sampling import CHUNK, UniformStreams, call_seed, draw, rollout_seed


def rollout(
    model: torch.nn.Module,
    features: dict[str, torch.Tensor],
    *,
    gen_emb_id: int,
    disc_emb_id: int,
    generation_config: GenerationConfig,
    on_missing: OnMissing,
    logits_processor: Sequence[Any] = (),
    stopping_criteria: Sequence[Any] = (),
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
        generation_config: From :func:`~ume_plugins.engine.generation_config.build_generation_config`.
        on_missing: ``"force"`` feeds ``<gen_emb>`` after rollouts that lack it (flagged);
            ``"raise"`` raises :class:`~ume_plugins.engine.base.GenEmbMissingError`.
        logits_processor: The user's processors; they see every row of the batch, as in ``generate``.
        stopping_criteria: The user's stopping criteria, likewise.
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
    hidden, cache, offsets = prefill(model, inputs)
    disc_states = None
    if with_disc:
        rows = torch.arange(batch, device=input_ids.device)
        disc_states = hidden[rows, last_position(input_ids, disc_emb_id)].float()
    logits = model.lm_head(hidden[:, -1]).float()
    del hidden  # frees the prompts' hidden states: only the KV cache lives on
    loop = _DecodeLoop(
        model,
        cache,
        input_ids=input_ids.repeat_interleave(num_samples, dim=0),
        attention_mask=inputs["attention_mask"].repeat_interleave(num_samples, dim=0),
        offsets=offsets.repeat_interleave(num_samples, dim=0),
        gen_emb_id=gen_emb_id,
        config=generation_config,
        user_processors=list(logits_processor),
        user_stopping=list(stopping_criteria),
        on_missing=on_missing,
        num_samples=num_samples,
        seed=seed,
    )
    if num_samples > 1:
        cache.batch_repeat_interleave(num_samples)
        logits = logits.repeat_interleave(num_samples, dim=0)
    states, generated, forced, steps = loop.run(logits)
    return assemble(
        states,
        generated,
        forced,
        num_samples=num_samples,
        pad_token_id=generation_config.pad_token_id,
        disc_states=disc_states,
        decode_steps=steps,
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
        config: GenerationConfig,
        user_processors: list,
        user_stopping: list,
        on_missing: OnMissing,
        num_samples: int,
        seed: int | None,
    ):
        self.model, self.cache, self.config = model, cache, config
        self.gen_emb_id, self.on_missing, self.num_samples = gen_emb_id, on_missing, num_samples
        self.cache_keyword = cache_keyword(model)
        device = input_ids.device
        rows, prompt_len = input_ids.shape
        self.prompt_len = prompt_len
        self.ids, self.mask, self.offsets = input_ids, attention_mask, offsets
        self.lengths = attention_mask.sum(dim=-1)
        self.prompt_lengths = self.lengths.clone()
        eos = eos_token_ids(config)
        self.eos = torch.tensor(eos, dtype=torch.long, device=device)
        self.live = torch.arange(rows)  # output row of each live row
        self.closing = torch.zeros(rows, dtype=torch.bool, device=device)  # next input is a forced <gen_emb>
        self.states = torch.zeros(rows, model.config.text_config.hidden_size, dtype=torch.float32, device=device)
        self.forced = torch.zeros(rows, dtype=torch.bool)
        self.generated: list[list[int]] = [[] for _ in range(rows)]
        # User callables may index rows or keep per-row state: they see every row, as in generate.
        self.all_ids = input_ids if user_processors or user_stopping else None
        self.pad_id = config.pad_token_id
        user_processors = [_WholeBatchProcessor(processor, self) for processor in user_processors]
        self.processors = ScoreProcessors(config, eos, user_processors, device=device)
        self.stopping = StoppingCriteriaList([_WholeBatchStopping(criterion, self) for criterion in user_stopping])
        self.streams = None
        if config.do_sample:
            seed = call_seed(seed)
            self.streams = UniformStreams(rows, device)
            prompts = [ids[mask.bool()].tolist() for ids, mask in zip(input_ids, attention_mask, strict=True)]
            for row in range(rows):
                self.streams.assign(row, rollout_seed(seed, prompts[row], row % num_samples))

    def run(self, logits: torch.Tensor) -> tuple[torch.Tensor, list[list[int]], torch.Tensor, int]:
        """Decode until every row's ``<gen_emb>`` state is read; returns states, ids, forced flags, steps."""
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
        return self.states, self.generated, self.forced, step

    def _choose(self, logits: torch.Tensor, step: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The token each row feeds next, which rows feed ``<gen_emb>`` now, and which must next step."""
        free = ~self.closing
        gen_emb = torch.full_like(self.lengths, self.gen_emb_id)
        if not free.any():
            return gen_emb, self.closing.clone(), torch.zeros_like(self.closing)
        scores = self.processors(
            logits,
            own_ids=own_ids(self.ids, self.mask),
            ordered_ids=self.ids,
            new_tokens=self.lengths - self.prompt_lengths,
            prompt_lengths=self.prompt_lengths,
        )
        if self.streams is not None:
            if step and step % CHUNK == 0:
                self.streams.refresh(list(range(len(self.live))))
            tokens = draw(scores, self.streams.at(torch.tensor(step)))
        else:
            tokens = scores.argmax(dim=-1)
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
            raise missing_gen_emb_error(outputs.tolist(), self.num_samples, self.config.max_new_tokens)
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
            use_cache=True,
            **{self.cache_keyword: self.cache},
        )
        return output.last_hidden_state[:, -1]

    def _read(self, hidden: torch.Tensor, final: torch.Tensor) -> None:
        """Keep the state and the reasoning ids of the rows whose input was ``<gen_emb>``."""
        if not final.any():
            return
        outputs = self.live[final.cpu()]
        self.states[outputs.to(self.states.device)] = hidden[final].float()
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
        self.prompt_lengths = self.prompt_lengths[rows]
        self.offsets, self.closing = self.offsets[rows], self.closing[rows]
        self.live = self.live[rows.cpu()]
        if self.streams is not None:
            self.streams.keep(rows)


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
