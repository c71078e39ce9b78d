"""Loading adapters into a model, and saving / reloading a model with its adapters."""

from __future__ import annotations

import logging
import os
import posixpath
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from ume_plugins.adapters.layers import (
    activate,
    active_adapters,
    adapter_configs,
    adapter_names,
    adapter_state_dict,
    adapters_enabled,
    base_state_dict,
    has_adapter_layers,
    inject,
    refuse_base_changes,
)
from ume_plugins.adapters.source import ADAPTER_WEIGHTS, PEFT_PREFIX, check_adapter_name, read_adapter, require_peft
from ume_plugins.checkpoints import HubOptions

if TYPE_CHECKING:
    from transformers import PreTrainedModel

logger = logging.getLogger(__name__)

ADAPTERS_KEY = "adapters"
ADAPTERS_DIR = "adapters"


def load_adapter(
    model: PreTrainedModel,
    source: str | os.PathLike,
    adapter_name: str | None = None,
    *,
    subfolder: str = "",
    hub: HubOptions | None = None,
) -> str:
    """Load a LoRA/DoRA adapter into ``model`` in place, check every weight landed, and activate it.

    Args:
        model: The Qwen2-VL model.
        source: A local adapter folder or a hub repository id (``adapter_config.json`` plus
            ``adapter_model.safetensors``, as peft's ``save_pretrained`` writes them).
        adapter_name: Name to load it under (default ``"default"``); letters, digits, ``_.-``.
        subfolder: Folder of the adapter inside ``source``.
        hub: How a hub ``source`` is fetched (revision, token, cache folder, offline).

    Returns:
        The adapter's name.

    Raises:
        ImportError: peft is not installed.
        AdapterMismatchError: The adapter's keys or values do not all match the model; the model is
            left as it was.
        ValueError: The name is taken or invalid, the adapter is not LoRA/DoRA, changes base weights
            (``bias``, ``modules_to_save``, trainable tokens), or has only pickled weights.
        FileNotFoundError: ``source`` is a local path without an adapter.
    """
    require_peft()
    name = check_adapter_name(adapter_name or "default")
    if name in adapter_names(model):
        raise ValueError(f"an adapter named {name!r} is already loaded; pass another adapter_name")
    adapter = read_adapter(source, subfolder, hub)
    inject(model, name, adapter)
    activate(model, [name], enabled=True)
    logger.info("Loaded adapter %r from %s (%d tensors)", name, adapter.where, len(adapter.state))
    return name


def save_weights(model: PreTrainedModel, output_path: str) -> None:
    """Save the weights as safetensors: a plain checkpoint, or :func:`save_adapted_model` with adapters."""
    if has_adapter_layers(model):
        save_adapted_model(model, output_path)
    else:
        model.save_pretrained(output_path, safe_serialization=True)


def save_adapted_model(model: PreTrainedModel, output_path: str) -> None:
    """Save the base weights as a plain checkpoint and each adapter under ``adapters/<name>/``.

    The adapters' names and state go with the module's settings (see :func:`adapter_record`).
    """
    from safetensors.torch import save_file

    refuse_base_changes(model)
    model.save_pretrained(output_path, state_dict=base_state_dict(model))
    for name, config in adapter_configs(model).items():
        folder = os.path.join(output_path, ADAPTERS_DIR, check_adapter_name(name))
        os.makedirs(folder, exist_ok=True)
        state = adapter_state_dict(model, name)
        tensors = {PEFT_PREFIX + key: value.detach().cpu().contiguous() for key, value in state.items()}
        save_file(tensors, os.path.join(folder, ADAPTER_WEIGHTS), metadata={"format": "pt"})
        config.save_pretrained(folder)


def adapter_record(model: PreTrainedModel) -> dict[str, Any] | None:
    """The adapters' names, active ones and enabled state, or None without adapters."""
    names = adapter_names(model)
    if not names:
        return None
    return {"names": names, "active": active_adapters(model), "enabled": adapters_enabled(model)}


def load_saved_adapters(
    model: PreTrainedModel,
    record: Mapping[str, Any],
    source: str,
    subfolder: str = "",
    hub: HubOptions | None = None,
) -> None:
    """Reload the adapters a saved model recorded, with their active and enabled state.

    Args:
        model: The Qwen2-VL model.
        record: What :func:`adapter_record` gave when the model was saved.
        source: The saved model's folder or hub id.
        subfolder: The module's folder inside ``source``.
        hub: How a hub ``source`` is fetched (revision, token, cache folder, offline).

    Raises:
        ValueError: The record is malformed.
    """
    names, active = list(record.get("names", [])), list(record.get("active", []))
    if not names or not set(active) <= set(names) or not isinstance(record.get("enabled"), bool):
        raise ValueError(f"malformed saved adapter record in {source}: {dict(record)}")
    for name in names:
        folder = posixpath.join(subfolder, ADAPTERS_DIR, check_adapter_name(name))
        load_adapter(model, source, name, subfolder=folder, hub=hub)
    activate(model, active, enabled=record["enabled"])
