"""The declarative half: mteb ``ModelMeta`` for UME-R1 in both embedding modes.

Checkpoint facts come from the core (:mod:`ume_plugins.checkpoints`: hub id, pinned revision,
sizes, licence, release, training links, citation); they match mteb's own ``ume_r1.py`` entry.
The mode is an experiment kwarg: generative, the mode of every reported UME-R1 score, is the
default and adds none; ``{"mode": "discriminative"}`` names the other, so mteb's cache keeps both
apart (``results/<model>/<revision>/experiments/mode_discriminative/``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mteb.models.model_meta import ModelMeta, ScoringFunction
from mteb.types import OutputDType

from ume_mteb.modes import DEFAULT_MODE
from ume_plugins.checkpoints import CITATION, UME_R1_2B, UME_R1_7B, Checkpoint
from ume_plugins.settings import DEFAULT_SETTINGS

# mteb task names overlapping UME-R1's training data (UME-sft-train), as in mteb's own entry.
UME_R1_TRAINING_DATASETS = {
    *(f"Kinetics700{suffix}" for suffix in ("V", "VA", "VZeroShot", "VAZeroShot")),
    "SomethingSomethingV2Classification",
    *(f"HMDB51{suffix}" for suffix in ("Classification", "Clustering", "ZeroShot")),
    "UCF101",
    *(f"UCF101{suffix}" for suffix in ("VideoClassification", "VideoAudioClassification")),
    *(f"UCF101{suffix}" for suffix in ("VideoClustering", "AudioVideoClustering")),
    "BreakfastClassification",
    *(f"DiDeMo{pair}Retrieval" for pair in ("A2V", "AT2V", "T2V", "T2VA", "V2A", "V2T", "VA2T", "VT2A")),
    *(f"MSRVTT{pair}" for pair in ("A2V", "AT2V", "T2V", "T2VA", "V2A", "V2T", "VA2T", "VT2A")),
    "MSVDT2VRetrieval",
    "MSVDV2TRetrieval",
    *(f"VATEX{pair}Retrieval" for pair in ("A2V", "AT2V", "T2V", "T2VA", "V2A", "V2T", "VA2T", "VT2A")),
    *(f"YouCook2{pair}Retrieval" for pair in ("A2V", "AT2V", "T2V", "T2VA", "V2A", "V2T", "VA2T", "VT2A")),
    "Imagenet1k",
    "Imagenet1kZeroShot",
}

_BASE_KWARGS: dict[str, Any] = dict(
    model_type=["dense"],
    languages=["eng-Latn"],
    modalities=["image", "text", "video"],
    open_weights=True,
    framework=["Sentence Transformers", "PyTorch", "Transformers", "safetensors"],
    similarity_fn_name=ScoringFunction.COSINE,
    use_instructions=True,
    training_datasets=UME_R1_TRAINING_DATASETS,
    citation=CITATION,
    output_dtypes=OutputDType.BF16,
)


def _load(model_name: str, revision: str | None = None, **kwargs: Any):
    """``ModelMeta.loader``: mteb calls it with the name, revision, device and experiment kwargs."""
    from ume_mteb.encoder import load_model

    return load_model(model_name, revision=revision, **kwargs)


# ModelMeta field -> the core's Checkpoint attribute that holds it.
_FROM_CHECKPOINT = {
    "name": "hub_id",
    "revision": "revision",
    "release_date": "release_date",
    "license": "license",
    "public_training_code": "training_code",
    "public_training_data": "training_data",
    "n_parameters": "n_parameters",
    "n_embedding_parameters": "n_embedding_parameters",
    "max_tokens": "max_positions",
    "embed_dim": "embed_dim",
    "adapted_from": "base",
}


def _checkpoint_meta(checkpoint: Checkpoint) -> ModelMeta:
    facts = {field: getattr(checkpoint, name) for field, name in _FROM_CHECKPOINT.items()}
    meta = ModelMeta(
        loader=_load,
        reference=f"https://huggingface.co/{checkpoint.hub_id}",
        memory_usage_mb=None,
        **facts,
        **_BASE_KWARGS,
    )
    # mteb's own estimate from the parameter count (fp32), as its entries state it; reads no hub.
    return meta.model_copy(update={"memory_usage_mb": meta.calculate_memory_usage_mb()})


UME_R1_2B_META = _checkpoint_meta(UME_R1_2B)
UME_R1_7B_META = _checkpoint_meta(UME_R1_7B)
CHECKPOINT_METAS = {meta.name: meta for meta in (UME_R1_2B_META, UME_R1_7B_META)}
# Registry keys of this implementation: mteb already registers the hub ids with its own wrapper.
REGISTRY_NAMES = {
    "ume-plugins/UME-R1-2B": UME_R1_2B_META,
    "ume-plugins/UME-R1-7B": UME_R1_7B_META,
}


def experiment_kwargs(mode: str, generation: dict[str, Any] | None = None) -> dict[str, Any] | None:
    """What sets a run apart from the default (generative, upstream's budget), as mteb experiment kwargs.

    Args:
        mode: ``"generative"`` or ``"discriminative"``.
        generation: Generative mode only: the ``generate`` settings in use (``max_new_tokens``, ...);
            plain values are recorded, upstream's 8192-token budget is not.

    Returns:
        The experiment kwargs, or None for the default run.
    """
    if mode != DEFAULT_MODE:
        return {"mode": mode}
    kwargs = {
        key: value
        for key, value in (generation or {}).items()
        if isinstance(value, (str, int, float, bool))
        and (key, value) != ("max_new_tokens", DEFAULT_SETTINGS.max_new_tokens)
    }
    return kwargs or None


def meta_for(
    name_or_path: str,
    *,
    mode: str,
    revision: str | None,
    embed_dim: int,
    n_parameters: int,
    generation: dict[str, Any] | None = None,
) -> ModelMeta:
    """The ``ModelMeta`` of a loaded UME-R1 checkpoint in one mode.

    The published checkpoints (by alias or hub id) get their declared metadata; any other
    checkpoint (the tiny test model, a local fine-tune) gets the same description under
    ``ume-plugins/<folder name>`` with its measured size, and no claim about its training data.

    Args:
        name_or_path: What was loaded (alias, hub id or folder).
        mode: The embedding mode.
        revision: The revision that was loaded, when it is not the pinned one.
        embed_dim: Measured embedding size.
        n_parameters: Measured parameter count.
        generation: The generative ``generate`` settings in use (see :func:`experiment_kwargs`).
    """
    from ume_plugins.checkpoints import resolve_name

    resolved = resolve_name(name_or_path, revision)
    update: dict[str, Any] = {"experiment_kwargs": experiment_kwargs(mode, generation)}
    if resolved is not None and resolved.checkpoint is not None:
        meta = CHECKPOINT_METAS[resolved.checkpoint.hub_id]
        if resolved.revision != meta.revision:
            update["revision"] = resolved.revision
        return meta.model_copy(update=update)
    folder = Path(resolved.path if resolved else name_or_path)
    update |= {
        "name": f"ume-plugins/{folder.name}",
        "revision": "local",
        "n_parameters": n_parameters,
        "n_embedding_parameters": None,
        "memory_usage_mb": None,
        "embed_dim": embed_dim,
        "reference": None,
        "adapted_from": None,
        "release_date": None,
        "training_datasets": None,
        "output_dtypes": None,
    }
    return UME_R1_2B_META.model_copy(update=update)


def register() -> list[str]:
    """Add this implementation to mteb's model registry without replacing mteb's own UME-R1 entries.

    Afterwards ``mteb.get_model("ume-plugins/UME-R1-2B", mode="discriminative")`` loads it. The
    hub ids are added too, but only where this mteb version has no entry of its own.

    Returns:
        The registry keys that now point at this implementation.
    """
    from mteb.models.model_implementations import MODEL_REGISTRY

    added = []
    for key, meta in [*REGISTRY_NAMES.items(), *CHECKPOINT_METAS.items()]:
        if MODEL_REGISTRY.setdefault(key, meta) is meta:
            added.append(key)
    return added
