"""mteb batches as core inputs: each row of a batch becomes one ``ume_plugins`` input dict.

mteb batches are dicts of columns (``text``, ``image`` (one image or a list), ``video``, plus ids
and labels to ignore); the text and images of one row are fused into one input.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from mteb.types import BatchedInput
    from torch.utils.data import DataLoader

_CONTENT_KEYS = ("text", "image", "video")


def rows_of(batch: dict[str, list[Any]]) -> list[dict[str, Any]]:
    """One core input dict per row of an mteb batch; empty fields are dropped."""
    columns = {key: batch[key] for key in _CONTENT_KEYS if key in batch}
    size = len(next(iter(columns.values()), []))
    rows = []
    for index in range(size):
        row = {key: _content(values[index]) for key, values in columns.items()}
        row = {key: value for key, value in row.items() if value is not None}
        rows.append(row or {"text": ""})
    return rows


def _content(value: Any) -> Any:
    if value is None or (isinstance(value, (str, list)) and not value):
        return None
    if isinstance(value, dict):  # an undecoded video: {"bytes": ..., "path": ...}
        return value.get("bytes") or (Path(value["path"]) if value.get("path") else None)
    return value


def undecoded_videos(inputs: DataLoader[BatchedInput]) -> DataLoader[BatchedInput]:
    """The loader, with video files handed over undecoded so that the core samples their frames.

    mteb decodes videos with torchcodec and samples frames its own way; the spec samples
    ``linspace(0, n - 1, 8)`` cast to int and reads every frame under the image pixel rules, which
    the core does from the file (with PyAV).
    """
    from datasets import Video

    dataset = getattr(inputs, "dataset", None)
    features = getattr(dataset, "features", None) or {}
    if not isinstance(features.get("video"), Video):
        return inputs
    from torch.utils.data import DataLoader

    return DataLoader(
        dataset.cast_column("video", Video(decode=False)),
        batch_size=inputs.batch_size,
        collate_fn=inputs.collate_fn,
        num_workers=inputs.num_workers,
    )
