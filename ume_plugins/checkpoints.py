"""Per-checkpoint facts and the names that resolve to them."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Checkpoint:
    """A published UME-R1 checkpoint.

    Attributes:
        name: Display name.
        hub_id: Hugging Face Hub repository.
        revision: Pinned commit loaded by default.
        base: The Qwen2-VL checkpoint it was fine-tuned from.
        embed_dim: Embedding size (the decoder's hidden size).
        n_parameters: Parameter count.
    """

    name: str
    hub_id: str
    revision: str
    base: str
    embed_dim: int
    n_parameters: int


UME_R1_2B = Checkpoint(
    name="UME-R1-2B",
    hub_id="zhibinlan/UME-R1-2B",
    revision="e7aaa253cd315be20bd15c8704ad281b4fdf82c9",
    base="Qwen/Qwen2-VL-2B-Instruct",
    embed_dim=1536,
    n_parameters=2_208_985_600,
)
UME_R1_7B = Checkpoint(
    name="UME-R1-7B",
    hub_id="zhibinlan/UME-R1-7B",
    revision="b5c08e3273d979e0f22445306717c39ca8d45df0",
    base="Qwen/Qwen2-VL-7B-Instruct",
    embed_dim=3584,
    n_parameters=8_291_375_616,
)
CHECKPOINTS = (UME_R1_2B, UME_R1_7B)
TINY_ALIAS = "ume-r1-tiny"
ALIASES: dict[str, Checkpoint] = {
    "ume-r1": UME_R1_2B,
    "ume-r1-2b": UME_R1_2B,
    "ume-r1-7b": UME_R1_7B,
    **{checkpoint.hub_id.lower(): checkpoint for checkpoint in CHECKPOINTS},
}


@dataclass(frozen=True)
class Resolved:
    """Where a name points: a local directory or a hub id, with the revision to load."""

    path: str
    revision: str | None
    checkpoint: Checkpoint | None


def resolve_name(name: str, revision: str | None = None) -> Resolved | None:
    """Map an alias or UME-R1 hub id to what to load; None for any other name.

    ``"ume-r1-tiny"`` builds the offline tiny checkpoint once and points at its cache directory.
    A hub id keeps an explicit ``revision``, else gets the pinned one.
    """
    key = name.strip().lower()
    if key == TINY_ALIAS:
        from ume_plugins.tiny import tiny_checkpoint_path

        return Resolved(path=str(tiny_checkpoint_path()), revision=None, checkpoint=None)
    checkpoint = ALIASES.get(key)
    if checkpoint is None or Path(name).is_dir():
        return None
    return Resolved(path=checkpoint.hub_id, revision=revision or checkpoint.revision, checkpoint=checkpoint)
