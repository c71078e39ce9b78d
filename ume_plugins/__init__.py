"""UME-R1 reasoning-driven multimodal embeddings for the sentence-transformers ecosystem.

Importing this package teaches ``SentenceTransformer`` the UME-R1 names (see
:mod:`ume_plugins.dropin`)::

    import ume_plugins
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer("ume-r1")  # UME-R1-2B at its pinned revision
    vectors = model.encode(["a cat on a sofa", {"image": "cat.jpg"}], mode="discriminative")

The import itself is light (no torch, transformers or sentence-transformers): the public names
below are loaded on first use.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from ume_plugins.dropin import install_when_imported

__version__ = "0.1.0"

# Public name -> the module that defines it, imported on first access (PEP 562).
_PUBLIC = {
    "UME_R1_2B": "ume_plugins.checkpoints",
    "UME_R1_7B": "ume_plugins.checkpoints",
    "Checkpoint": "ume_plugins.checkpoints",
    "is_ume_r1_checkpoint": "ume_plugins.checkpoints",
    "EmbeddingSettings": "ume_plugins.settings",
    "InputPolicy": "ume_plugins.policy",
    "UMEInputError": "ume_plugins.errors",
    "GenEmbMissingError": "ume_plugins.engine",
    "load": "ume_plugins.loading",
    "UMESentenceTransformer": "ume_plugins.model",
    "UMER1Embedder": "ume_plugins.module",
    "NAMED_PROMPTS": "ume_plugins.prompts",
    "ReasonedEmbeddings": "ume_plugins.reasoning",
    "encode_with_reasoning": "ume_plugins.reasoning",
    "build_tiny_checkpoint": "ume_plugins.tiny",
    "tiny_checkpoint_path": "ume_plugins.tiny",
}
__all__ = [
    "UME_R1_2B",
    "UME_R1_7B",
    "NAMED_PROMPTS",
    "Checkpoint",
    "EmbeddingSettings",
    "GenEmbMissingError",
    "InputPolicy",
    "ReasonedEmbeddings",
    "UMEInputError",
    "UMER1Embedder",
    "UMESentenceTransformer",
    "build_tiny_checkpoint",
    "encode_with_reasoning",
    "is_ume_r1_checkpoint",
    "load",
    "tiny_checkpoint_path",
]

if TYPE_CHECKING:
    from ume_plugins.checkpoints import UME_R1_2B, UME_R1_7B, Checkpoint, is_ume_r1_checkpoint
    from ume_plugins.engine import GenEmbMissingError
    from ume_plugins.errors import UMEInputError
    from ume_plugins.loading import load
    from ume_plugins.model import UMESentenceTransformer
    from ume_plugins.module import UMER1Embedder
    from ume_plugins.policy import InputPolicy
    from ume_plugins.prompts import NAMED_PROMPTS
    from ume_plugins.reasoning import ReasonedEmbeddings, encode_with_reasoning
    from ume_plugins.settings import EmbeddingSettings
    from ume_plugins.tiny import build_tiny_checkpoint, tiny_checkpoint_path


def __getattr__(name: str) -> Any:
    if name not in _PUBLIC:
        raise AttributeError(f"module 'ume_plugins' has no attribute {name!r}")
    value = getattr(importlib.import_module(_PUBLIC[name]), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_PUBLIC])


install_when_imported()
