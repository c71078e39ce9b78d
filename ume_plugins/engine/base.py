"""What every generative backend shares: the result type, its errors, EOS ids and output assembly.

Each backend (the slot engine, the reference loop, vLLM) produces per rollout a ``<gen_emb>`` state,
the ids it wrote and how it ended; :func:`assemble` turns those into one :class:`Rollout`, and
:func:`missing_gen_emb_error` / :func:`forced_warning` word the two ways of reporting a rollout
that never wrote ``<gen_emb>``. Backends never log it themselves: the caller says it once per call.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

import torch
from transformers import GenerationConfig

OnMissing = Literal["force", "raise"]
ON_MISSING: tuple[str, ...] = ("force", "raise")


class GenEmbMissingError(RuntimeError):
    """Raised with ``on_missing="raise"`` when rollouts end without ``<gen_emb>``."""


@dataclass
class Rollout:
    """What generative mode produced for a batch of ``batch`` inputs with ``k`` rollouts each.

    Attributes:
        states: ``[batch, k, hidden]`` float32 last-layer states at ``<gen_emb>`` (not normalised),
            on the model's device.
        generated_ids: ``[batch, k, steps]`` reasoning ids up to and including ``<gen_emb>`` (a
            forced ``<gen_emb>`` is not included), right-padded with the pad id, on the CPU.
        forced: ``[batch, k]`` True where ``<gen_emb>`` was appended because the rollout ended
            without writing it (EOS, token budget, answer budget or a stopping criterion).
        answer_forced: ``[batch, k]`` True where the thinking budget closed the reasoning by
            feeding ``</think><answer>``.
        disc_states: ``[batch, hidden]`` states at ``<disc_emb>`` from the same prefill, when asked.
        decode_steps: Decoder steps the backend ran (0 where it does not count them).
    """

    states: torch.Tensor
    generated_ids: torch.Tensor
    forced: torch.Tensor
    answer_forced: torch.Tensor
    disc_states: torch.Tensor | None = None
    decode_steps: int = field(default=0)

    @property
    def forced_count(self) -> int:
        """Rollouts whose ``<gen_emb>`` was appended."""
        return int(self.forced.sum())


def eos_token_ids(config: GenerationConfig) -> tuple[int, ...]:
    """The ids that end a rollout: the generation config's ``eos_token_id`` (one id or several)."""
    eos = config.eos_token_id
    ids = eos.tolist() if isinstance(eos, torch.Tensor) else eos if isinstance(eos, list | tuple) else [eos]
    return tuple(sorted({int(token) for token in ids if token is not None}))


def missing_gen_emb_error(rollouts: Sequence[int], num_samples: int, max_new_tokens: int) -> GenEmbMissingError:
    """The error for ``on_missing="raise"``; ``rollouts`` are input-major rollout indices."""
    inputs = sorted({int(rollout) // num_samples for rollout in rollouts})
    return GenEmbMissingError(
        f"batch rows {inputs} ended without writing <gen_emb> (at an end-of-sequence token or at the "
        f"{max_new_tokens}-token budget); raise max_new_tokens or use on_missing_gen_emb='force'"
    )


def forced_warning(forced: int, total: int, max_new_tokens: int | None) -> str:
    """The warning for rollouts whose ``<gen_emb>`` was appended (say it once per call)."""
    return (
        f"{forced} of {total} rollouts ended without writing <gen_emb> (at an end-of-sequence token, at the "
        f"{max_new_tokens}-token budget or at their answer budget): <gen_emb> was appended after their "
        "reasoning (flagged as gen_emb_forced)."
    )


def assemble(
    states: torch.Tensor,
    generated: Sequence[Sequence[int]],
    forced: Sequence[bool] | torch.Tensor,
    *,
    num_samples: int,
    pad_token_id: int,
    answer_forced: Sequence[bool] | torch.Tensor | None = None,
    disc_states: torch.Tensor | None = None,
    decode_steps: int = 0,
) -> Rollout:
    """One :class:`Rollout` from per-rollout results in input-major order (input i's k rollouts together).

    Args:
        states: ``[rollouts, hidden]`` states at ``<gen_emb>``.
        generated: Per rollout, the reasoning ids (a forced ``<gen_emb>`` left out).
        forced: Per rollout, whether ``<gen_emb>`` was appended.
        num_samples: Rollouts per input (k).
        pad_token_id: Right padding of ``generated_ids``.
        answer_forced: Per rollout, whether the thinking budget fed ``</think><answer>`` (default: never).
        disc_states: ``[batch, hidden]`` states at ``<disc_emb>``, when asked.
        decode_steps: Decoder steps run.
    """
    count = len(generated)
    batch = count // num_samples
    width = max((len(ids) for ids in generated), default=0)
    generated_ids = torch.full((count, width), pad_token_id, dtype=torch.long)
    for row, ids in enumerate(generated):
        generated_ids[row, : len(ids)] = torch.as_tensor(list(ids), dtype=torch.long)
    flags = torch.as_tensor(forced, dtype=torch.bool).cpu()
    answer = torch.zeros(count, dtype=torch.bool) if answer_forced is None else torch.as_tensor(answer_forced)
    return Rollout(
        states=states.float().view(batch, num_samples, -1),
        generated_ids=generated_ids.view(batch, num_samples, width),
        forced=flags.view(batch, num_samples),
        answer_forced=answer.to(torch.bool).cpu().view(batch, num_samples),
        disc_states=None if disc_states is None else disc_states.float(),
        decode_steps=decode_steps,
    )
