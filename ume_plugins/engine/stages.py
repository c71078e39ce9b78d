"""How each rollout of the slot engine ends: the token it feeds next and when ``<gen_emb>`` is forced.

A rollout writes ``<think> ... </think><answer> ... </answer><gen_emb>``. Per slot, from the token
the model proposes:

- ``<gen_emb>`` ends the rollout normally: its state is read at that step.
- EOS (or a user stopping criterion) ends it without ``<gen_emb>``: ``<gen_emb>`` is fed instead,
  and the rollout is flagged ``gen_emb_forced``.
- ``max_new_tokens`` is the hard cap: after that many fed tokens the next input is a forced
  ``<gen_emb>`` (flagged).
- The graceful reasoning budget (``thinking_budget``): when that many tokens were fed and the
  rollout has not closed its thinking itself (no ``</think`` or ``<answer`` written yet), the next
  inputs are ``</think><answer>`` (flagged ``answer_forced``); the model then answers within
  ``answer_budget`` tokens, after which ``<gen_emb>`` is forced (flagged ``gen_emb_forced``).
  Trade-off: a shorter reasoning is faster and its answer still summarises the input, but how
  much a cut reasoning costs in retrieval quality is unmeasured (it needs the real weights).

Everything is a fixed-shape tensor operation with no host synchronisation, so a step can be
captured in a CUDA graph.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

_NO_TOKEN = -2  # fills the recent-token window before a rollout has written anything
_ANY = -1  # wildcard in a right-aligned pattern


@dataclass(frozen=True)
class Budget:
    """The token ids and budgets that decide how a rollout ends.

    Attributes:
        gen_emb_id: Id of ``<gen_emb>``.
        eos_ids: Ids that end a rollout.
        max_new_tokens: Hard cap on fed tokens before ``<gen_emb>`` is forced.
        thinking_budget: Tokens after which an unclosed thinking part is closed (None: never).
        answer_budget: Tokens the model may answer after a forced ``</think><answer>``.
        answer_open: Ids of ``</think><answer>``, fed when the thinking budget closes the reasoning.
        think_closers: Id sequences (``</think``, ``<answer`` as the tokenizer writes them) that show a
            rollout closed its thinking itself.
    """

    gen_emb_id: int
    eos_ids: tuple[int, ...]
    max_new_tokens: int
    thinking_budget: int | None = None
    answer_budget: int = 64
    answer_open: tuple[int, ...] = ()
    think_closers: tuple[tuple[int, ...], ...] = ()

    @property
    def graceful(self) -> bool:
        """Whether the thinking budget is on."""
        return self.thinking_budget is not None and bool(self.answer_open)


class Stages:
    """Per-slot ending state, as device tensors changed in place.

    Args:
        budget: The ids and budgets.
        slots: Number of slots.
        device: Device of the tensors.
    """

    def __init__(self, budget: Budget, slots: int, device: torch.device | str) -> None:
        self.budget = budget
        longest = max((len(closer) for closer in budget.think_closers), default=1)
        patterns = torch.full((max(len(budget.think_closers), 1), longest), _ANY, dtype=torch.long)
        for row, closer in enumerate(budget.think_closers):
            patterns[row, longest - len(closer) :] = torch.tensor(closer)
        self.patterns = patterns.to(device)
        self.answer_open = torch.tensor(budget.answer_open or (budget.gen_emb_id,), dtype=torch.long, device=device)
        self.eos = torch.tensor(budget.eos_ids or (budget.gen_emb_id,), dtype=torch.long, device=device)
        self.live = torch.zeros(slots, dtype=torch.bool, device=device)
        self.new = torch.zeros(slots, dtype=torch.long, device=device)
        self.closing = torch.zeros(slots, dtype=torch.bool, device=device)
        self.forcing = torch.full((slots,), -1, dtype=torch.long, device=device)  # index into answer_open
        self.answer_end = torch.zeros(slots, dtype=torch.long, device=device)  # `new` when a forced answer began
        self.think_closed = torch.zeros(slots, dtype=torch.bool, device=device)
        self.recent = torch.full((slots, longest), _NO_TOKEN, dtype=torch.long, device=device)
        self.final = torch.zeros(slots, dtype=torch.bool, device=device)
        self.gen_emb_forced = torch.zeros(slots, dtype=torch.bool, device=device)
        self.answer_forced = torch.zeros(slots, dtype=torch.bool, device=device)

    def start(self, slot: int) -> None:
        """Make ``slot`` a fresh rollout."""
        self.live[slot] = True
        self.new[slot] = 0
        self.closing[slot] = False
        self.forcing[slot] = -1
        self.answer_end[slot] = 0
        self.think_closed[slot] = False
        self.recent[slot] = _NO_TOKEN
        self.final[slot] = False
        self.gen_emb_forced[slot] = False
        self.answer_forced[slot] = False

    def keep(self, rows: torch.Tensor, slots: int) -> None:
        """Resize to ``slots`` slots holding the state of old slots ``rows`` first (the rest empty)."""
        for name in ("live", "new", "closing", "forcing", "answer_end", "think_closed", "recent", "final"):
            setattr(self, name, _resized(getattr(self, name), rows, slots))
        for name in ("gen_emb_forced", "answer_forced"):
            setattr(self, name, _resized(getattr(self, name), rows, slots))

    def choose(self, proposed: torch.Tensor, stopped: torch.Tensor | None = None) -> torch.Tensor:
        """The token each slot feeds this step, given the model's proposals; updates the state.

        Args:
            proposed: ``[slots]`` the tokens the model chose.
            stopped: ``[slots]`` True where a user stopping criterion ends the rollout after this token.

        Returns:
            ``[slots]`` tokens to feed. :attr:`final` marks the slots whose input is ``<gen_emb>``.
        """
        budget = self.budget
        live = self.live
        feeding = live & (self.forcing >= 0)
        free = live & ~self.closing & ~feeding
        wrote = free & (proposed == budget.gen_emb_id)
        ended = free & torch.isin(proposed, self.eos)
        tokens = torch.where(feeding, self.answer_open[self.forcing.clamp(min=0)], proposed)
        tokens = torch.where(self.closing | ended, torch.full_like(tokens, budget.gen_emb_id), tokens)
        final = live & (self.closing | wrote | ended)
        going = live & ~final
        new = self.new + going.long()
        forcing = torch.where(feeding, self.forcing + 1, self.forcing)
        forcing = torch.where(forcing >= len(self.answer_open), torch.full_like(forcing, -1), forcing)
        close = going & (new >= budget.max_new_tokens)
        answer_forced = self.answer_forced
        if budget.graceful:
            recent = torch.where(going[:, None], torch.cat([self.recent[:, 1:], tokens[:, None]], dim=1), self.recent)
            self.recent.copy_(recent)
            matches = (self.patterns[None] == _ANY) | (recent[:, None] == self.patterns[None])
            closed = self.think_closed | (going & matches.all(dim=-1).any(dim=-1))
            self.think_closed.copy_(closed)
            think = going & ~close & ~closed & ~answer_forced & (new >= budget.thinking_budget)
            forcing = torch.where(think, torch.zeros_like(forcing), forcing)
            self.answer_end.copy_(torch.where(think, new + len(self.answer_open), self.answer_end))
            answer_forced = answer_forced | think
            answered = answer_forced & (forcing < 0) & (new >= self.answer_end + budget.answer_budget)
            close = close | (going & ~think & answered)
        if stopped is not None:
            close = close | (going & stopped)
        self.gen_emb_forced.copy_(self.gen_emb_forced | ended | close)
        self.answer_forced.copy_(answer_forced)
        self.closing.copy_(close)
        self.forcing.copy_(forcing)
        self.new.copy_(new)
        self.final.copy_(final)
        self.live.copy_(going)
        return tokens

    def flags(self, out: torch.Tensor | None = None) -> torch.Tensor:
        """``[3, slots]``: whose input was ``<gen_emb>`` this step, ``gen_emb_forced``, ``answer_forced``.

        Args:
            out: A ``[3, slots]`` bool buffer to write them into (the step's own), or None for a new tensor.
        """
        return torch.stack([self.final, self.gen_emb_forced, self.answer_forced], out=out)


def _resized(tensor: torch.Tensor, rows: torch.Tensor, slots: int) -> torch.Tensor:
    """``tensor`` with ``slots`` rows, old rows ``rows`` first and zeros (or its fill) after."""
    out = torch.zeros((slots, *tensor.shape[1:]), dtype=tensor.dtype, device=tensor.device)
    out[: len(rows)] = tensor[rows.to(tensor.device)]
    return out


def closer_ids(tokenizer: Any, closers: Sequence[tuple[str, str]] = (("</", "think"), ("<", "answer"))) -> tuple:
    """Id sequences that write ``</think`` or ``<answer``, however the BPE merged the text around them.

    In context the tokenizer merges freely (``"><" + "answer"``, ``" </" + "think"``), so the
    patterns come from the vocabulary: any token ending with the whole closer, or a token ending
    with its prefix followed by the word's own token.
    """
    vocab = tokenizer.get_vocab()
    found: set[tuple[int, ...]] = set()
    for prefix, word in closers:
        found |= {(index,) for token, index in vocab.items() if token.endswith(prefix + word)}
        if word in vocab:
            found |= {(index, vocab[word]) for token, index in vocab.items() if token.endswith(prefix)}
    return tuple(sorted(found))
