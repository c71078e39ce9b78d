"""Seeded per-rollout sampling: the same input, seed and sample index give the same rollout.

``generate``-style sampling draws from one global random stream, so a rollout changes with its
batch-mates, the batch size and the order ST sorted the inputs in. Here every rollout owns a
generator seeded from (seed, the input's prompt ids, the sample index); its n-th token is drawn by
inverting the CDF of the already-warped scores (temperature, top-k, top-p, ... come from
transformers' own warpers) with the n-th number of its stream, whatever row or slot it runs in.
"""

from __future__ import annotations

import hashlib

import torch

CHUNK = 256


def rollout_seed(seed: int, prompt_ids: list[int], sample: int) -> int:
    """A 63-bit seed for one rollout, from the call's seed, the input's prompt ids and the sample index."""
    digest = hashlib.blake2b(digest_size=8)
    digest.update(seed.to_bytes(8, "little", signed=True))
    digest.update(sample.to_bytes(4, "little"))
    digest.update(torch.tensor(prompt_ids, dtype=torch.int64).numpy().tobytes())
    return int.from_bytes(digest.digest(), "little") >> 1


def call_seed(seed: int | None) -> int:
    """The call's seed; None draws one from torch's global generator (so ``torch.manual_seed`` works)."""
    return int(torch.randint(2**62, (1,)).item()) if seed is None else seed


def draw(scores: torch.Tensor, uniforms: torch.Tensor) -> torch.Tensor:
    """``[rows]`` token ids from ``[rows, vocab]`` warped scores, one uniform number per row."""
    cdf = torch.softmax(scores.float(), dim=-1).cumsum(dim=-1)
    target = (uniforms.to(cdf.device) * cdf[:, -1]).unsqueeze(-1)
    tokens = torch.searchsorted(cdf, target, right=True).squeeze(-1)
    return tokens.clamp_(max=scores.shape[-1] - 1)


class UniformStreams:
    """One random stream per row, read at each row's own step.

    Numbers are drawn on the CPU ``CHUNK`` steps at a time, so memory stays O(rows) whatever the
    token budget; rows may be reassigned (a slot taking a new rollout) or dropped.

    Args:
        rows: Number of rows.
        device: Device the numbers are read on.
    """

    def __init__(self, rows: int, device: torch.device | str = "cpu") -> None:
        self.generators: list[torch.Generator | None] = [None] * rows
        self.chunks = torch.zeros(rows, CHUNK, device=device)

    def assign(self, row: int, seed: int) -> None:
        """Give ``row`` a fresh stream (its first chunk drawn)."""
        self.generators[row] = torch.Generator().manual_seed(seed)
        self.refresh([row])

    def refresh(self, rows: list[int]) -> None:
        """Draw the next chunk of each of ``rows`` (call when a row's step reaches a multiple of ``CHUNK``)."""
        for row in rows:
            generator = self.generators[row]
            if generator is not None:
                self.chunks[row] = torch.rand(CHUNK, generator=generator).to(self.chunks.device)

    def keep(self, rows: torch.Tensor, total: int | None = None) -> None:
        """Keep only ``rows`` (indices into the current rows), in that order, then empty rows up to ``total``."""
        total = len(rows) if total is None else total
        self.generators = [self.generators[row] for row in rows.tolist()] + [None] * (total - len(rows))
        chunks = torch.zeros(total, CHUNK, device=self.chunks.device)
        chunks[: len(rows)] = self.chunks[rows.to(self.chunks.device)]
        self.chunks = chunks

    def at(self, steps: torch.Tensor) -> torch.Tensor:
        """Each row's number at its step (``[rows]`` steps, or one step for every row)."""
        index = (steps % CHUNK).to(self.chunks.device).expand(self.chunks.shape[0])
        return self.chunks.gather(1, index[:, None])[:, 0]
