"""The processor: decoded items become model features.

It renders each item as UME-R1's chat prompt (:mod:`ume_plugins.prompts`), gives text-only inputs
the eval's blank image, cuts over-long texts to ``max_length`` and runs the checkpoint's Qwen2-VL
processor over the batch, adding per-row image and video counts (the engine needs them to split a
batch). The counterpart of colpali-engine's processors; the module calls it from ``preprocess``.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from typing import Any

import torch

from ume_plugins.checkpoints import HubOptions
from ume_plugins.decoding import Item
from ume_plugins.errors import UMEInputError
from ume_plugins.media import blank_image
from ume_plugins.prompts import build_message, cut_after_disc_token
from ume_plugins.settings import EmbeddingSettings, Mode

logger = logging.getLogger(__name__)


PROCESSING_KWARGS_REFUSED = (
    "processing_kwargs is not supported by UME-R1: set min_pixels, max_pixels, processor_min_pixels, "
    "processor_max_pixels or num_frames on the model (ume_plugins.load(..., num_frames=4))"
)


class UMEProcessor:
    """Turns decoded items into the model's features, under given settings.

    Args:
        processor: The checkpoint's ``Qwen2VLProcessor`` (its tokenizer pads on the left).
        max_positions: The decoder's ``max_position_embeddings``.
    """

    def __init__(self, processor: Any, max_positions: int) -> None:
        self.processor = processor
        self.max_positions = max_positions

    @classmethod
    def from_pretrained(
        cls, name_or_path: str, max_positions: int, hub: HubOptions, processor_kwargs: dict[str, Any] | None = None
    ) -> UMEProcessor:
        """The processor of a checkpoint, its tokenizer padding on the left (as the engine needs).

        Args:
            name_or_path: Checkpoint folder or hub id.
            max_positions: The decoder's ``max_position_embeddings``.
            hub: How the hub is reached.
            processor_kwargs: Passed to ``AutoProcessor.from_pretrained``.
        """
        from transformers import AutoProcessor

        processor = AutoProcessor.from_pretrained(name_or_path, **hub.for_transformers(), **(processor_kwargs or {}))
        processor.tokenizer.padding_side = "left"
        return cls(processor, max_positions)

    @property
    def tokenizer(self) -> Any:
        """The checkpoint's tokenizer."""
        return self.processor.tokenizer

    def __call__(
        self, items: list[Item], instruction: str | None, mode: Mode, settings: EmbeddingSettings
    ) -> dict[str, Any]:
        """Render, truncate and process a batch.

        An input whose full generative prompt exceeds the limit (``settings.max_length``, see
        :meth:`~ume_plugins.settings.EmbeddingSettings.prompt_token_limit`) loses tokens from the end
        of its own text, with a warning; the instruction, the vision tokens and the chat scaffolding
        (``<disc_emb>``, the generation prompt) are always kept. The limit is measured on the
        generative prompt in every mode, so both modes see the same text.

        Args:
            items: Decoded inputs.
            instruction: Task instruction for the ``TEXT`` slot.
            mode: Embedding mode; discriminative prompts stop right after ``<disc_emb>``.
            settings: The embedding settings.

        Returns:
            Processor outputs plus ``images_per_row`` / ``videos_per_row``, ``ume_mode`` and the
            final items (``ume_items``: blank images added, texts cut).

        Raises:
            UMEInputError: A prompt too long even without its text (too many or too large images,
                or a too long instruction); names the input's index.
        """
        items = [self._with_blank_image(item, settings) for item in items]
        limit = settings.prompt_token_limit(self.max_positions)
        # Tokens after <disc_emb> that a discriminative prompt leaves out but the limit counts.
        tail = self._generation_tail_length() if mode == "discriminative" else 0
        original_texts: dict[int, str] = {}
        features = self._run(items, instruction, mode, settings)
        # Each round shortens every over-long text, so this ends.
        while over := self._over_limit(features, tail, limit):
            for row, excess in over:
                original_texts.setdefault(row, items[row].text or "")
                items[row] = replace(items[row], text=self._cut_text(items[row], excess, limit))
            features = self._run(items, instruction, mode, settings)
        for row, text in original_texts.items():
            logger.warning(
                "Input %d: text of %d tokens truncated to %d to fit max_length=%d",
                items[row].index,
                self.count_tokens(text),
                self.count_tokens(items[row].text),
                limit,
            )
        features["images_per_row"] = torch.tensor([len(item.images) for item in items])
        features["videos_per_row"] = torch.tensor([int(item.video is not None) for item in items])
        features["ume_mode"] = mode
        features["ume_items"] = items  # the vLLM backend reads the media itself
        return features

    def count_tokens(self, text: str | None) -> int:
        """Tokens of ``text`` alone (no special tokens)."""
        return len(self.tokenizer(text or "", add_special_tokens=False)["input_ids"])

    @staticmethod
    def _with_blank_image(item: Item, settings: EmbeddingSettings) -> Item:
        if not item.is_text_only:
            return item
        if not (item.text or "").strip():
            logger.warning("Input %d: empty or blank text, embedded as an input without text", item.index)
        if not settings.blank_image_for_text:
            return item
        return replace(item, images=(blank_image(settings.min_pixels, settings.max_pixels),))

    def _run(self, items: list[Item], instruction: str | None, mode: Mode, settings: EmbeddingSettings) -> dict:
        texts = [self._render(item, instruction) for item in items]
        if mode == "discriminative":
            texts = [cut_after_disc_token(text) for text in texts]
        images = [image for item in items for image in item.images]
        videos = [list(item.video) for item in items if item.video is not None]
        size = {"shortest_edge": settings.processor_min_pixels, "longest_edge": settings.processor_max_pixels}
        return dict(
            self.processor(
                text=texts,
                images=images or None,
                videos=videos or None,
                padding=True,
                return_tensors="pt",
                images_kwargs={"size": size},
                videos_kwargs={"size": size, "do_sample_frames": False, "cap_pixels_per_frame": False},
            )
        )

    def _render(self, item: Item, instruction: str | None) -> str:
        message = build_message(item, instruction)
        return self.processor.apply_chat_template(message, tokenize=False, add_generation_prompt=True)

    @staticmethod
    def _over_limit(features: dict[str, Any], tail: int, limit: int) -> list[tuple[int, int]]:
        """``(row, tokens too many)`` for each row whose full prompt exceeds the limit."""
        excess = (features["attention_mask"].sum(dim=1) + tail - limit).tolist()
        return [(row, tokens) for row, tokens in enumerate(excess) if tokens > 0]

    def _generation_tail_length(self) -> int:
        rendered = self._render(Item(index=0, text=None, images=(), video=None), None)
        return self.count_tokens(rendered[len(cut_after_disc_token(rendered)) :])

    def _cut_text(self, item: Item, excess: int, limit: int) -> str:
        """A prefix of the item's text about ``excess`` tokens shorter, ending on a token boundary.

        Tokens counted alone may merge differently inside the prompt, so the caller measures again.
        """
        text = item.text or ""
        offsets = self.tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
        if not offsets:
            raise UMEInputError(
                f"prompt exceeds max_length={limit} tokens even without its text: "
                "use fewer or smaller images or frames, or a shorter instruction"
            ).at(item.index)
        first_dropped = offsets[max(len(offsets) - excess, 0)][0]
        # At least one character goes, so every round makes progress.
        return text[: min(first_dropped, len(text) - 1)]
