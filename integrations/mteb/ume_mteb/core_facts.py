"""UME-R1 facts that belong to the core (``ume_plugins``), declared once for all of ume_mteb.

The core does not export these yet; every other module of this package reads them from here, so
pointing ume_mteb at the core is a change to this file alone. Light on purpose (no torch, no
mteb): ``ume-mteb --help`` imports it.
"""

from __future__ import annotations

from pathlib import Path

# The core's modes that give one vector per input ("both" adds a second, which mteb has no use for).
MODES = ("generative", "discriminative")
# The core's default mode: the mode of every reported UME-R1 score.
DEFAULT_MODE = "generative"
# The core's default reasoning budget, upstream's eval budget; runs with another are experiments.
UPSTREAM_MAX_NEW_TOKENS = 8192

# Facts shared by both published checkpoints (model cards, paper, mteb's own entries).
MAX_TOKENS = 32768
RELEASE_DATE = "2025-11-10"
LICENSE = "apache-2.0"
TRAINING_CODE = "https://github.com/XMUDeepLIT/UME-R1"
TRAINING_DATA = "https://huggingface.co/datasets/zhibinlan/UME-sft-train"
CITATION = """@article{lan2025ume,
  title={UME-R1: Exploring Reasoning-Driven Generative Multimodal Embeddings},
  author={Lan, Zhibin and Niu, Liqiang and Meng, Fandong and Zhou, Jie and Su, Jinsong},
  journal={arXiv preprint arXiv:2511.00405},
  year={2025}
}"""
# Per checkpoint (by hub id), as mteb's own entries state them.
SIZES: dict[str, dict[str, int]] = {
    "zhibinlan/UME-R1-2B": {"n_embedding_parameters": 233_373_696, "memory_usage_mb": 8427},
    "zhibinlan/UME-R1-7B": {"n_embedding_parameters": 544_997_376, "memory_usage_mb": 31629},
}

# The core's offline random checkpoint: its alias, and the prefix of the folder it is built into.
TINY_ALIAS = "ume-r1-tiny"


def is_tiny(name_or_path: str | Path) -> bool:
    """Whether a name or folder is the tiny random-weights checkpoint (by alias or cache folder)."""
    return Path(str(name_or_path).strip()).name.lower().startswith(TINY_ALIAS)
