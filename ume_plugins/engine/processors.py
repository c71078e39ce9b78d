"""A step's logits to scores, as ``generate``'s processors and warpers would turn them.

Built from transformers' public processor classes, in ``generate``'s order: the config's processors,
then the user's (a user processor of the same class as a built-in one takes its place, as in
``generate``), then the sampling warpers, then renormalisation. Two views of the ids feed them:

- *own ids*: each row's real tokens only (prompt and reasoning), padding replaced by a token the
  row already holds, so the repetition penalty never depends on the row's batch-mates;
- *ordered ids*: the rows as ``generate`` lays them out (left-padded, last token last), for the
  user's processors and the order-reading fields (n-gram bans, bad words, sequence bias).

``min_length`` / ``min_new_tokens`` are counted per row on real tokens, so rows of different
lengths and steps (the slot engine) keep their meaning.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from transformers import (
    EpsilonLogitsWarper,
    EtaLogitsWarper,
    GenerationConfig,
    LogitNormalization,
    MinPLogitsWarper,
    NoBadWordsLogitsProcessor,
    NoRepeatNGramLogitsProcessor,
    RepetitionPenaltyLogitsProcessor,
    SequenceBiasLogitsProcessor,
    SuppressTokensLogitsProcessor,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
    TypicalLogitsWarper,
)

_OWN, _ORDERED = "own", "ordered"


class ScoreProcessors:
    """The processors a generation config and the user's ``logits_processor`` list ask for.

    Args:
        config: From :func:`~ume_plugins.engine.generation_config.build_generation_config`.
        eos_ids: Ids that end a rollout (the ones ``min_length`` holds back).
        user_processors: The user's ``logits_processor`` list.
        device: Device of the scores.
    """

    def __init__(
        self,
        config: GenerationConfig,
        eos_ids: Sequence[int],
        user_processors: Sequence[Any] = (),
        device: torch.device | str = "cpu",
    ) -> None:
        built = _config_processors(config, eos_ids, device)
        user = list(user_processors)
        steps: list[tuple[Any, str]] = []
        for processor, view in built:
            replacement = next((custom for custom in user if type(custom) is type(processor)), None)
            if replacement is not None:
                user.remove(replacement)
            steps.append((processor, view) if replacement is None else (replacement, _ORDERED))
        steps += [(processor, _ORDERED) for processor in user]
        # Order-reading processors (the user's, and built-in n-gram/bad-word bans) may read ids on the
        # host; only those declared ``capturable`` may be replayed from a CUDA graph.
        self.capturable = all(view != _ORDERED or getattr(processor, "capturable", False) for processor, view in steps)
        steps += [(warper, _OWN) for warper in _warpers(config, device)]
        self.steps = steps
        self.min_new_tokens = int(config.min_new_tokens or 0)
        self.min_length = int(config.min_length or 0)
        self.eos = torch.tensor(list(eos_ids), dtype=torch.long, device=device)

    @property
    def reads_order(self) -> bool:
        """Whether some processor needs the ordered ids (else callers may pass None for them)."""
        return any(view == _ORDERED for _, view in self.steps)

    def __call__(
        self,
        logits: torch.Tensor,
        *,
        own_ids: torch.Tensor,
        ordered_ids: torch.Tensor | None,
        new_tokens: torch.Tensor,
        prompt_lengths: torch.Tensor,
    ) -> torch.Tensor:
        """``[rows, vocab]`` scores from float logits.

        Args:
            logits: ``[rows, vocab]`` float32 logits of the next token.
            own_ids: ``[rows, width]`` each row's real tokens (padding replaced by one of them).
            ordered_ids: ``[rows, width']`` the rows as ``generate`` lays them out.
            new_tokens: ``[rows]`` tokens each row has fed after its prompt.
            prompt_lengths: ``[rows]`` real prompt tokens of each row.
        """
        scores = logits
        if self.min_new_tokens or self.min_length:
            short = (new_tokens < self.min_new_tokens) | (prompt_lengths + new_tokens < self.min_length)
            held = torch.zeros_like(scores, dtype=torch.bool)
            held[:, self.eos] = True
            scores = scores.masked_fill(held & short[:, None], float("-inf"))
        for processor, view in self.steps:
            scores = processor(own_ids if view == _OWN else ordered_ids, scores)
        return scores

    def __bool__(self) -> bool:
        return bool(self.steps) or bool(self.min_new_tokens or self.min_length)


def _config_processors(config: GenerationConfig, eos_ids: Sequence[int], device: Any) -> list[tuple[Any, str]]:
    """The config's processors in ``generate``'s order, each with the ids view it reads."""
    built: list[tuple[Any, str]] = []
    if config.sequence_bias is not None:
        built.append((SequenceBiasLogitsProcessor(sequence_bias=config.sequence_bias), _ORDERED))
    if config.repetition_penalty is not None and config.repetition_penalty != 1.0:
        built.append((RepetitionPenaltyLogitsProcessor(float(config.repetition_penalty)), _OWN))
    if config.no_repeat_ngram_size:
        built.append((NoRepeatNGramLogitsProcessor(config.no_repeat_ngram_size), _ORDERED))
    if config.bad_words_ids is not None:
        built.append((NoBadWordsLogitsProcessor(config.bad_words_ids, eos_token_id=list(eos_ids)), _ORDERED))
    if config.suppress_tokens is not None:
        built.append((SuppressTokensLogitsProcessor(config.suppress_tokens, device=device), _OWN))
    return built


def _warpers(config: GenerationConfig, device: Any) -> list[Any]:
    """The sampling warpers and renormalisation, as ``generate`` builds them for one sequence per input."""
    warpers: list[Any] = []
    if config.do_sample:
        if config.temperature is not None and config.temperature != 1.0:
            warpers.append(TemperatureLogitsWarper(config.temperature))
        if config.top_k is not None and config.top_k != 0:
            warpers.append(TopKLogitsWarper(top_k=config.top_k, min_tokens_to_keep=1))
        if config.top_p is not None and config.top_p < 1.0:
            warpers.append(TopPLogitsWarper(top_p=config.top_p, min_tokens_to_keep=1))
        if config.min_p is not None:
            warpers.append(MinPLogitsWarper(min_p=config.min_p, min_tokens_to_keep=1))
        if config.typical_p is not None and config.typical_p < 1.0:
            warpers.append(TypicalLogitsWarper(mass=config.typical_p, min_tokens_to_keep=1))
        if config.epsilon_cutoff is not None and 0.0 < config.epsilon_cutoff < 1.0:
            warpers.append(EpsilonLogitsWarper(epsilon=config.epsilon_cutoff, min_tokens_to_keep=1))
        if config.eta_cutoff is not None and 0.0 < config.eta_cutoff < 1.0:
            warpers.append(EtaLogitsWarper(epsilon=config.eta_cutoff, min_tokens_to_keep=1, device=device))
    if config.renormalize_logits is True:
        warpers.append(LogitNormalization())
    return warpers


def own_ids(ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Each row's ids with its padding replaced by the row's first real token (a no-op for penalties)."""
    first = ids.gather(1, mask.long().argmax(dim=1, keepdim=True))
    return torch.where(mask.bool(), ids, first)
