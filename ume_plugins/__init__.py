"""UME-R1 reasoning-driven multimodal embeddings for the sentence-transformers ecosystem.

Importing this package teaches ``SentenceTransformer`` the UME-R1 names (see
:mod:`ume_plugins.loading`)::

    import ume_plugins
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer("ume-r1")  # UME-R1-2B at its pinned revision
    vectors = model.encode(["a cat on a sofa", {"image": "cat.jpg"}], mode="discriminative")
"""

from __future__ import annotations

from ume_plugins.checkpoints import UME_R1_2B, UME_R1_7B, Checkpoint
from ume_plugins.engine import GenEmbMissingError
from ume_plugins.errors import UMEInputError
from ume_plugins.loading import install, is_ume_r1_checkpoint, load
from ume_plugins.module import UMER1Embedder, encode_with_reasoning
from ume_plugins.tiny import build_tiny_checkpoint, tiny_checkpoint_path

__version__ = "0.1.0"

install()

__all__ = [
    "UME_R1_2B",
    "UME_R1_7B",
    "Checkpoint",
    "GenEmbMissingError",
    "UMEInputError",
    "UMER1Embedder",
    "build_tiny_checkpoint",
    "encode_with_reasoning",
    "is_ume_r1_checkpoint",
    "load",
    "tiny_checkpoint_path",
]
