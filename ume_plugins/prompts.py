r"""Prompt building: a validated item becomes the chat message UME-R1 was trained and evaluated on.

Layout of one input (official eval collator), rendered by the checkpoint's Qwen2-VL chat template::

    <|im_start|>system\nYou are a helpful assistant.<|im_end|>\n
    <|im_start|>user\n{visual content}{TEXT}\n<disc_emb>\n{GEN_PROMPT}<|im_end|>\n
    <|im_start|>assistant\n
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ume_plugins.inputs import Item

SYSTEM_PROMPT = "You are a helpful assistant."
GEN_PROMPT = (
    "Represent the above input text, images, videos, or any combination of the three as embeddings. "
    "First output the thinking process in <think> </think> tags and then summarize the entire input "
    "in a word or sentence. Finally, use the <gen_emb> tag to represent the entire input."
)
GEN_EMB_TOKEN = "<gen_emb>"
DISC_EMB_TOKEN = "<disc_emb>"
_STRAY_PLACEHOLDERS = ("<|image_pad|>", "<|video_pad|>")


def compose_text(instruction: str | None, text: str | None) -> str:
    r"""The ``TEXT`` slot: instruction and input text joined by one space, placeholders removed.

    Args:
        instruction: Task instruction, or None / "" for none.
        text: The input's own text, or None.

    Returns:
        The stripped text that precedes ``\n<disc_emb>``.
    """
    combined = " ".join(part for part in (instruction, text) if part)
    for placeholder in _STRAY_PLACEHOLDERS:
        combined = combined.replace(placeholder, "")
    return combined.strip()


def build_message(item: Item, instruction: str | None) -> list[dict[str, Any]]:
    """One user turn: visual content first (images in order, then the video), then the text.

    The images and frames themselves are handed to the processor separately; the message only
    carries their placeholders, so the chat template renders the vision spans.

    Args:
        item: The validated input (its blank image for text-only inputs already added).
        instruction: Task instruction for the ``TEXT`` slot.

    Returns:
        A one-message conversation for ``apply_chat_template``.
    """
    content: list[dict[str, Any]] = [{"type": "image"} for _ in item.images]
    if item.video is not None:
        content.append({"type": "video"})
    text = compose_text(instruction, item.text)
    content.append({"type": "text", "text": f"{text}\n{DISC_EMB_TOKEN}\n{GEN_PROMPT}"})
    return [{"role": "user", "content": content}]


def cut_after_disc_token(rendered: str) -> str:
    """Drop everything after the last ``<disc_emb>``.

    Causal attention makes the ``<disc_emb>`` state independent of what follows it, so the
    discriminative pass can skip the generation prompt.
    """
    return rendered[: rendered.rindex(DISC_EMB_TOKEN) + len(DISC_EMB_TOKEN)]
