"""Chat messages, the format sentence-transformers uses for mixed inputs, as UME-R1 inputs.

A message ``{"role": "user", "content": ...}`` holds a string or parts ``{"type": "text" |
"image" | "video", <type>: value}`` (also ``"url"`` / ``"path"`` instead of the value, as in
transformers' chat format). UME-R1 places visual content before the text whatever the parts'
order, and keeps its default system prompt, so a system turn is refused.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ume_plugins.errors import UMEInputError


def message_as_dict(message: Mapping) -> dict[str, Any]:
    """A user chat message as the equivalent ``{"text", "image", "video"}`` input.

    Raises:
        UMEInputError: Not one user message, or parts other than one text, images and one video.
    """
    if message.get("role") != "user":
        raise UMEInputError(
            f"chat message role {message.get('role')!r}: only one 'user' message is accepted "
            "(UME-R1 keeps its default system prompt)"
        )
    if set(message) - {"role", "content"}:
        raise UMEInputError(f"unknown chat message key(s) {sorted(set(message) - {'role', 'content'})}")
    content = message.get("content")
    if isinstance(content, str):
        return {"text": content}
    if not isinstance(content, (list, tuple)) or not content:
        raise UMEInputError("chat message content must be a string or a non-empty list of parts")
    found: dict[str, list[Any]] = {"text": [], "image": [], "video": []}
    for part in content:
        kind = part.get("type") if isinstance(part, Mapping) else None
        if kind not in found:
            raise UMEInputError(f"chat message part {_describe(part)}: 'type' must be 'text', 'image' or 'video'")
        values = [part[key] for key in (kind, "url", "path") if key in part]
        if len(values) != 1 or set(part) - {"type", kind, "url", "path"}:
            raise UMEInputError(f"chat message part {_describe(part)} must hold exactly one {kind!r} value")
        found[kind].append(values[0])
    if len(found["text"]) > 1 or len(found["video"]) > 1:
        raise UMEInputError("a chat message may hold at most one text part and one video part")
    return {
        "text": found["text"][0] if found["text"] else None,
        "image": found["image"] or None,
        "video": found["video"][0] if found["video"] else None,
    }


def _describe(part: Any) -> str:
    text = repr(part)
    return text if len(text) <= 80 else text[:80] + "..."
