"""What generative mode reports besides vectors: the reasoning text, and rollouts that lacked ``<gen_emb>``."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import torch
    from sentence_transformers import SentenceTransformer

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ReasonedEmbeddings:
    """Generative vectors with the reasoning that produced them.

    For a single input (one that ``encode`` would not treat as a batch) the fields hold one
    value each, as ``encode`` returns one vector.

    Attributes:
        embeddings: ``[n, dim]`` (single input: ``[dim]``) L2-normalised float32 vectors.
        reasoning: Per input, the generated text up to and including ``<gen_emb>``.
        forced: Per input, True where ``<gen_emb>`` had to be appended (budget exhausted).
    """

    embeddings: np.ndarray
    reasoning: list[str] | str
    forced: list[bool] | bool


def encode_with_reasoning(model: SentenceTransformer, inputs: Any, **kwargs: Any) -> ReasonedEmbeddings:
    """Encode in generative mode and return the reasoning text too.

    Args:
        model: A SentenceTransformer whose module is :class:`~ume_plugins.module.UMER1Embedder`.
        inputs: One input or a list of inputs, as for ``model.encode``.
        **kwargs: Passed to ``model.encode`` (``prompt``, ``batch_size``, ``generation_kwargs``, ...).

    Returns:
        Vectors, reasoning texts and forced-``<gen_emb>`` flags, in input order.

    Raises:
        ValueError: Discriminative mode (it writes no reasoning) or ``num_samples > 1``.
    """
    if kwargs.get("mode") == "discriminative":
        raise ValueError("discriminative mode writes no reasoning; use mode='generative' or 'both'")
    if kwargs.get("num_samples", 1) > 1:
        raise ValueError("encode_with_reasoning reads one rollout per input; use output_value=None for k rollouts")
    single = model.is_singular_input(inputs)
    rows = model.encode([inputs] if single else inputs, output_value=None, **kwargs)
    module = model[0]
    vectors = [row["sentence_embedding"].float().cpu().numpy() for row in rows]
    result = ReasonedEmbeddings(
        embeddings=np.stack(vectors) if vectors else np.zeros((0, module.get_embedding_dimension()), np.float32),
        reasoning=[module.decode_reasoning(row["generated_ids"]) for row in rows],
        forced=[bool(row["gen_emb_forced"]) for row in rows],
    )
    if single:
        return ReasonedEmbeddings(result.embeddings[0], result.reasoning[0], result.forced[0])
    return result


class ForcedGenEmbWarning:
    """Counts the rollouts that needed a forced ``<gen_emb>`` and warns once per call, with the total.

    The engine only flags rows; an ``encode`` call runs many batches, so the count is summed over
    the batches of the call (:meth:`once_per_call`) and said at its end. Outside a call, each batch
    is its own call.
    """

    def __init__(self) -> None:
        self.forced = self.rollouts = self.budget = 0
        self._calls = 0

    @contextmanager
    def once_per_call(self) -> Iterator[None]:
        """Hold the warning back until the outermost block ends."""
        self._calls += 1
        try:
            yield
        finally:
            self._calls -= 1
            if not self._calls:
                self._say()

    def add(self, forced: torch.Tensor, budget: int) -> None:
        """Count one batch's ``gen_emb_forced`` flags, rolled out with ``budget`` new tokens."""
        self.forced += int(forced.sum())
        self.rollouts += forced.numel()
        self.budget = budget
        if not self._calls:
            self._say()

    def _say(self) -> None:
        if self.forced:
            from ume_plugins.engine.base import forced_warning  # torch: only once encoding has run

            logger.warning(forced_warning(self.forced, self.rollouts, self.budget))
        self.forced = self.rollouts = 0
