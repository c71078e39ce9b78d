"""Rows of a processed batch: the features the model takes, and selecting, grouping and searching rows.

sentence-transformers sorts inputs before batching by a crude size (characters for text, pixels for
images), so one batch can mix prompts of very different token counts (a 130-token text beside a
50-token image prompt). For a single forward pass (discriminative mode) the padding is pure waste:
measured on the benchmark checkpoint, a batch of 32 mixed inputs carried 71% padding and ran
slower than 32 single calls. :func:`length_groups` cuts a batch into sub-batches of similar length:
the discriminative pass and the slot engine's prefills run in them.
"""

from __future__ import annotations

from typing import Any

import torch

_VISUAL_KEYS = (
    ("pixel_values", "image_grid_thw", "images_per_row"),
    ("pixel_values_videos", "video_grid_thw", "videos_per_row"),
)
_TOKEN_KEYS = ("input_ids", "attention_mask", "mm_token_type_ids")
_COUNT_KEYS = tuple(count_key for _, _, count_key in _VISUAL_KEYS)
# Extra padded tokens a group may carry, as a share of its real tokens.
MAX_PADDING = 0.25


def model_inputs(features: dict[str, Any]) -> dict[str, torch.Tensor]:
    """The features the model takes: the processor's tensors, without per-row counts or ``ume_*`` entries."""
    return {
        key: value
        for key, value in features.items()
        if key not in _COUNT_KEYS and not key.startswith("ume_") and isinstance(value, torch.Tensor)
    }


def visual_inputs(features: dict[str, Any]) -> dict[str, torch.Tensor]:
    """The pixel values and grids of the batch's images and videos (absent keys left out)."""
    keys = [key for pixels, grid, _ in _VISUAL_KEYS for key in (pixels, grid)]
    return {key: features[key] for key in keys if features.get(key) is not None}


def last_position(input_ids: torch.Tensor, token_id: int) -> torch.Tensor:
    """Per row, the index of the last occurrence of ``token_id`` (which must occur)."""
    positions = torch.arange(input_ids.shape[1], device=input_ids.device).expand_as(input_ids)
    return torch.where(input_ids == token_id, positions, -1).max(dim=1).values


def select_rows(features: dict[str, torch.Tensor], rows: list[int]) -> dict[str, torch.Tensor]:
    """The features of some batch rows (repeats allowed), visual patches included."""
    selected = {key: features[key][rows] for key in _TOKEN_KEYS if features.get(key) is not None}
    for pixels_key, grid_key, count_key in _VISUAL_KEYS:
        if features.get(pixels_key) is None:
            continue
        grids, counts = features[grid_key], features[count_key].tolist()
        first_item = [sum(counts[:row]) for row in range(len(counts))]
        items = [first_item[row] + offset for row in rows for offset in range(counts[row])]
        patches = grids.prod(dim=1).tolist()
        first_patch = [sum(patches[:item]) for item in range(len(patches))]
        if items:
            selected[pixels_key] = torch.cat(
                [features[pixels_key][first_patch[item] : first_patch[item] + patches[item]] for item in items]
            )
            selected[grid_key] = grids[items]
        selected[count_key] = features[count_key][rows]
    return selected


def length_groups(lengths: list[int], max_padding: float = MAX_PADDING) -> list[list[int]]:
    """Row indices, longest first, cut into groups that pad at most ``max_padding`` of their real tokens."""
    groups: list[list[int]] = []
    group: list[int] = []
    real = 0
    for row in sorted(range(len(lengths)), key=lambda index: -lengths[index]):
        if group and lengths[group[0]] * (len(group) + 1) > (1 + max_padding) * (real + lengths[row]):
            groups.append(group)
            group, real = [], 0
        group.append(row)
        real += lengths[row]
    if group:
        groups.append(group)
    return groups


def sub_batch(features: dict[str, torch.Tensor], rows: list[int]) -> dict[str, torch.Tensor]:
    """Some rows as a batch of their own, with the left-padding columns they do not need removed."""
    selected = select_rows(features, rows)
    width = int(selected["attention_mask"].sum(dim=1).max())
    for key in _TOKEN_KEYS:
        if key in selected:
            selected[key] = selected[key][:, -width:]
    return selected
