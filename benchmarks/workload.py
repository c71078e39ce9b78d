"""The benchmark's inputs and its forced-length reasoning, shared by every contender."""

from __future__ import annotations

import random

import torch
from transformers import LogitsProcessor

_WORDS = "the quick brown fox jumps over the lazy dog while a small cat sleeps on a red sofa".split()


def texts(count: int, seed: int = 0) -> list[str]:
    """Texts of 4 to 60 words, in a shuffled order (as a dataset would give them)."""
    rng = random.Random(seed)
    return [" ".join(rng.choice(_WORDS) for _ in range(rng.randint(4, 60))) for _ in range(count)]


def images(count: int, seed: int = 0) -> list:
    """Small random RGB images of a few sizes (multiples of 28: no resize)."""
    from PIL import Image

    generator = torch.Generator().manual_seed(seed)
    sizes = [(56, 56), (84, 56), (112, 84), (56, 112)]
    out = []
    for index in range(count):
        width, height = sizes[index % len(sizes)]
        pixels = torch.randint(0, 256, (height, width, 3), generator=generator, dtype=torch.uint8)
        out.append(Image.fromarray(pixels.numpy()))
    return out


class ForcedReasoning(LogitsProcessor):
    """Forces every rollout to write a scripted number of tokens, the last one ``<gen_emb>``, then EOS.

    Each row is read on its own (``per_row``: it runs on the slot engine too): its step is the
    number of tokens after its last ``<|im_start|>assistant\n``, wherever the row's padding ends.
    With ``varied=True`` a row's length is drawn from ``low..length`` by a seeded hash of its
    prompt tokens (padding ignored), so any engine given the same prompts decodes the same lengths.
    Everything is tensor arithmetic: no host synchronisation, cheap on a GPU, and ``capturable``
    (the slot engine replays it inside the step's CUDA graph, as it does its own processors).
    """

    per_row = True
    capturable = True

    def __init__(self, tokenizer, length: int, varied: bool = False, low: int | None = None, seed: int = 0):
        self.length, self.varied, self.seed = length, varied, seed
        self.low = length // 8 if low is None else low
        self.filler = tokenizer.convert_tokens_to_ids("Ġthe")
        self.gen_emb = tokenizer.convert_tokens_to_ids("<gen_emb>")
        self.eos = tokenizer.convert_tokens_to_ids("<|im_end|>")
        self.pad = tokenizer.pad_token_id
        self.im_start = tokenizer.convert_tokens_to_ids("<|im_start|>")
        self.header = len(tokenizer("assistant\n", add_special_tokens=False)["input_ids"])

    def lengths(self, input_ids: torch.Tensor, start: torch.Tensor) -> torch.Tensor:
        """Per row, the number of tokens to write (``<gen_emb>`` included)."""
        if not self.varied:
            return torch.full_like(start, self.length)
        positions = torch.arange(input_ids.shape[1], device=input_ids.device)
        prompt = (positions[None] < start[:, None]) & (input_ids != self.pad)
        rank = prompt.long().cumsum(dim=1)
        digest = (torch.where(prompt, input_ids, 0) * (2 * rank + 1)).sum(dim=1) % 1_000_003
        digest = (digest * 2_654_435_761 + self.seed * 97) % 2_147_483_647
        return self.low + digest % (self.length - self.low + 1)

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        width = input_ids.shape[1]
        positions = torch.arange(width, device=input_ids.device)
        start = torch.where(input_ids == self.im_start, positions, -1).amax(dim=1) + 1 + self.header
        step = width - start
        lengths = self.lengths(input_ids, start)
        token = torch.where(
            step < lengths - 1,
            self.filler,
            torch.where(step == lengths - 1, self.gen_emb, self.eos),
        )
        forced = torch.full_like(scores, float("-inf"))
        forced.scatter_(1, token[:, None], 0.0)
        return forced
