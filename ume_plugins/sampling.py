"""Seeded per-rollout sampling: the same input, seed and sample index give the same rollout.

``generate``-style sampling draws from one global random stream, so a rollout changes with its
batch-mates, the batch size and the order ST sorted the inputs in. Here every rollout owns a
generator seeded from (seed, the input's prompt ids, the sample index), and a token is drawn by
inverting the CDF of the already-warped scores (temperature, top-k, top-p, ... come from
transformers' own warpers) with that row's next uniform number.
"""

from __future__ import annotations

import hashlib

import torch

_CHUNK = 256


def rollout_seed(seed: int, prompt_ids: list[int], sample: int) -> int:
    """A 63-bit seed for one rollout, from the call's seed, the input's prompt ids and the sample index."""
    digest = hashlib.blake2b(digest_size=8)
    digest.update(seed.to_bytes(8, "little", signed=True))
    digest.update(sample.to_bytes(4, "little"))
    digest.update(torch.tensor(prompt_ids, dtype=torch.int64).numpy().tobytes())
    return int.from_bytes(digest.digest(), "little") >> 1


class SeededSampler:
    """Draws one token per row from warped scores, each row from its own random stream.

    Uniform numbers are drawn ``_CHUNK`` steps at a time, so memory stays O(rows) whatever the
    token budget.

    Args:
        seeds: One seed per row (see :func:`rollout_seed`).
    """

    def __init__(self, seeds: list[int]):
        self.generators = [torch.Generator().manual_seed(seed) for seed in seeds]
        self._uniforms = torch.empty(len(seeds), 0)
        self._first_step = -_CHUNK

    def keep(self, rows: torch.Tensor) -> None:
        """Drop the rows not in ``rows`` (indices into the current rows), as the batch shrinks."""
        indices = rows.tolist()
        self.generators = [self.generators[index] for index in indices]
        self._uniforms = self._uniforms[rows.cpu()]

    def __call__(self, scores: torch.Tensor, step: int) -> torch.Tensor:
        """Sample ``[rows]`` token ids from ``[rows, vocab]`` warped scores at decoding step ``step``."""
        # Chunks are drawn in order, so a row's number at a step never depends on when it was asked.
        while step >= self._first_step + _CHUNK:
            self._first_step += _CHUNK
            self._uniforms = torch.stack([torch.rand(_CHUNK, generator=g) for g in self.generators])
        uniform = self._uniforms[:, step - self._first_step].to(scores.device)
        cdf = torch.softmax(scores.float(), dim=-1).cumsum(dim=-1)
        target = (uniform * cdf[:, -1]).unsqueeze(-1)
        tokens = torch.searchsorted(cdf, target, right=True).squeeze(-1)
        return tokens.clamp_(max=scores.shape[-1] - 1)
