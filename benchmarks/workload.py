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
    """Forces every rollout to write ``length`` tokens, the last one ``<gen_emb>``, then EOS.

    With ``varied=True`` a row's length depends on its prompt (between ``length // 8`` and
    ``length``), like real reasoning; any engine given the same prompts decodes the same lengths.
    Rows share one prompt width (left padding), so the step is read from row 0 only: cheap.
    """

    def __init__(self, tokenizer, length: int, varied: bool = False):
        self.length, self.varied = length, varied
        self.filler = tokenizer.convert_tokens_to_ids("Ġthe")
        self.gen_emb = tokenizer.convert_tokens_to_ids("<gen_emb>")
        self.eos = tokenizer.convert_tokens_to_ids("<|im_end|>")
        self.pad = tokenizer.pad_token_id
        self.im_start = tokenizer.convert_tokens_to_ids("<|im_start|>")
        self.header = len(tokenizer("assistant\n", add_special_tokens=False)["input_ids"])

    def lengths(self, prompt: torch.Tensor) -> torch.Tensor:
        """Per row, the number of tokens to write (``<gen_emb>`` included)."""
        if not self.varied:
            return torch.full((prompt.shape[0],), self.length, device=prompt.device)
        real = (prompt != self.pad).sum(dim=1)
        low = self.length // 8
        return low + (real * 37) % (self.length - low + 1)

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        start = int((input_ids[0] == self.im_start).nonzero().max()) + 1 + self.header
        step = input_ids.shape[1] - start
        lengths = self.lengths(input_ids[:, :start])
        token = torch.where(step < lengths - 1, self.filler, torch.where(step == lengths - 1, self.gen_emb, self.eos))
        forced = torch.full_like(scores, float("-inf"))
        forced.scatter_(1, token[:, None], 0.0)
        return forced
