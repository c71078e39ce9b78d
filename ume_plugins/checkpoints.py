"""Per-checkpoint facts, the names that resolve to them, and how the hub is reached."""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any


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
        vocab_rows: Rows of the token embedding matrix.
        max_positions: The decoder's ``max_position_embeddings`` (prompt plus reasoning).
        license: SPDX license of the weights.
        release_date: Publication date of the weights (ISO), if known.
        training_code: Where the training code is published, if it is.
        training_data: Where the training data is published, if it is.
    """

    name: str
    hub_id: str
    revision: str
    base: str
    embed_dim: int
    n_parameters: int
    vocab_rows: int
    max_positions: int = 32768
    license: str = "apache-2.0"
    release_date: str | None = None
    training_code: str | None = None
    training_data: str | None = None

    @property
    def n_embedding_parameters(self) -> int:
        """Parameters of the token embedding matrix."""
        return self.vocab_rows * self.embed_dim


# The UME-R1 paper, which both published checkpoints cite.
CITATION = """@article{lan2025ume,
  title={UME-R1: Exploring Reasoning-Driven Generative Multimodal Embeddings},
  author={Lan, Zhibin and Niu, Liqiang and Meng, Fandong and Zhou, Jie and Su, Jinsong},
  journal={arXiv preprint arXiv:2511.00405},
  year={2025}
}"""


def _published(size: str, revision: str, embed_dim: int, n_parameters: int, vocab_rows: int) -> Checkpoint:
    """A checkpoint of the UME-R1 release: ``zhibinlan/UME-R1-<size>``, fine-tuned from Qwen2-VL-<size>-Instruct."""
    name = f"UME-R1-{size}"
    return Checkpoint(
        name,
        f"zhibinlan/{name}",
        revision,
        f"Qwen/Qwen2-VL-{size}-Instruct",
        embed_dim,
        n_parameters,
        vocab_rows,
        release_date="2025-11-10",
        training_code="https://github.com/XMUDeepLIT/UME-R1",
        training_data="https://huggingface.co/datasets/zhibinlan/UME-sft-train",
    )


UME_R1_2B = _published("2B", "e7aaa253cd315be20bd15c8704ad281b4fdf82c9", 1536, 2_208_985_600, 151_936)
UME_R1_7B = _published("7B", "b5c08e3273d979e0f22445306717c39ca8d45df0", 3584, 8_291_375_616, 152_064)
CHECKPOINTS = (UME_R1_2B, UME_R1_7B)
TINY_ALIAS = "ume-r1-tiny"
# The class a saved UME-R1 folder's modules.json names (checked against the class by a test).
MODULE_CLASS_REF = "ume_plugins.module.UMER1Embedder"
_REQUIRED_TOKENS = ("<gen_emb>", "<disc_emb>")
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


def check_local_path(name: str) -> None:
    """Refuse a model name that can only be a local path when no folder is there.

    Hub ids are ``owner/name``; a name starting with ``.``, ``/`` or ``~``, or with more slashes,
    is a path, and without this check the hub client would call it a malformed repo id.

    Raises:
        ValueError: The path is missing or is a file.
    """
    key = name.strip().lower()
    path = Path(name).expanduser()
    if path.is_dir() or key == TINY_ALIAS or key in ALIASES:
        return
    if path.exists():
        raise ValueError(f"model {name} is a file: give an alias, a hub id or a checkpoint folder")
    if name.startswith((".", "/", "~")) or name.count("/") > 1 or "\\" in name:
        raise ValueError(f"model folder {name} does not exist")


@dataclass(frozen=True)
class HubOptions:
    """How files are fetched from the Hugging Face Hub (or found in its cache).

    Attributes:
        revision: Branch, tag or commit.
        token: Hub token.
        cache_folder: Cache directory (None: the library default).
        local_files_only: Never reach the hub.
    """

    revision: str | None = None
    token: bool | str | None = None
    cache_folder: str | None = None
    local_files_only: bool = False

    def for_sentence_transformers(self) -> dict[str, Any]:
        """Keywords of sentence-transformers' loaders and ``load_file_path``."""
        return dataclasses.asdict(self)

    def for_transformers(self) -> dict[str, Any]:
        """Keywords of transformers' ``from_pretrained``, which calls the cache folder ``cache_dir``."""
        options = self.for_sentence_transformers()
        options["cache_dir"] = options.pop("cache_folder")
        return options


def is_ume_r1_checkpoint(name_or_path: str, hub: HubOptions | None = None) -> bool:
    """True for an alias, or a Qwen2-VL checkpoint whose tokenizer has ``<gen_emb>`` and ``<disc_emb>``."""
    from sentence_transformers.util import load_file_path

    if resolve_name(name_or_path) is not None:
        return True
    options = (hub or HubOptions()).for_sentence_transformers()
    config_path = load_file_path(name_or_path, "config.json", **options)
    if config_path is None:
        return False
    with open(config_path, encoding="utf-8") as file:
        if json.load(file).get("model_type") != "qwen2_vl":
            return False
    for filename in ("tokenizer.json", "tokenizer_config.json", "added_tokens.json"):
        path = load_file_path(name_or_path, filename, **options)
        if path is not None:
            with open(path, encoding="utf-8") as file:
                text = file.read()
            if all(json.dumps(token) in text for token in _REQUIRED_TOKENS):
                return True
    return False


def is_ume_r1_model(name_or_path: str, hub: HubOptions | None = None) -> bool:
    """True for anything that loads as UME-R1: an alias, a saved UME-R1 model or a raw UME-R1 checkpoint.

    A bare name that is neither an alias nor a folder is not looked up: sentence-transformers reads
    it as ``sentence-transformers/<name>``, never a UME-R1 checkpoint.
    """
    from sentence_transformers.util import load_file_path

    if resolve_name(name_or_path) is not None:
        return True
    if "/" not in name_or_path and not os.path.isdir(name_or_path):
        return False
    modules = load_file_path(name_or_path, "modules.json", **(hub or HubOptions()).for_sentence_transformers())
    if modules is None:
        return is_ume_r1_checkpoint(name_or_path, hub)
    with open(modules, encoding="utf-8") as file:
        return any(entry.get("type") == MODULE_CLASS_REF for entry in json.load(file))


def add_requirements(folder: str, requirements: dict[str, Any]) -> None:
    """Merge package ``requirements`` into a saved model's ``config_sentence_transformers.json``.

    sentence-transformers writes that file before the modules save and checks its
    ``requirements`` before it loads any weight; a folder without it is left alone.
    """
    path = Path(folder, "config_sentence_transformers.json")
    if not path.is_file():
        return
    config = json.loads(path.read_text(encoding="utf-8"))
    config["requirements"] = {**config.get("requirements", {}), **requirements}
    path.write_text(json.dumps(config, indent=2, sort_keys=True), encoding="utf-8")
