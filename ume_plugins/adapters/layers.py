"""Adapter layers inside a Qwen2-VL model, through peft's public functional API only.

peft's ``inject_adapter_in_model`` wraps the targeted modules in place and records each adapter's
config in the model's ``peft_config`` dict (peft's documented seam for several adapters on a plain
model); ``peft.functional`` switches, reads and deletes them. Nothing here goes through
transformers' own peft integration, which refuses peft releases older than the one it was built
against even where peft's API is unchanged.
"""

from __future__ import annotations

import logging
import sys
import warnings
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

import torch

from ume_plugins.adapters.source import AdapterFile, modern_key, unsupported_reason

if TYPE_CHECKING:
    from transformers import PreTrainedModel

logger = logging.getLogger(__name__)

_MAX_LISTED = 20
_LORA_PREFIX = "lora_"


class AdapterMismatchError(ValueError):
    """An adapter's weights do not all match the model's modules; nothing was loaded.

    Attributes:
        not_in_model: Keys of the adapter file that no module of the model took.
        not_in_file: Adapter weights the model expects but the file lacks.
        differing: Keys whose loaded value differs from the file (e.g. a shape mismatch).
    """

    def __init__(self, source: str, not_in_model: list[str], not_in_file: list[str], differing: list[str]) -> None:
        self.not_in_model = not_in_model
        self.not_in_file = not_in_file
        self.differing = differing
        parts = [f"adapter {source} does not match this UME-R1 model; it was not loaded."]
        for label, keys in (
            ("keys in the file that match no module of the model", not_in_model),
            ("adapter weights the model expects but the file lacks", not_in_file),
            ("weights whose loaded value differs from the file", differing),
        ):
            if keys:
                listed = "\n  ".join(keys[:_MAX_LISTED])
                more = f"\n  ... and {len(keys) - _MAX_LISTED} more" if len(keys) > _MAX_LISTED else ""
                parts.append(f"{len(keys)} {label}:\n  {listed}{more}")
        super().__init__("\n".join(parts))


def adapter_configs(model: PreTrainedModel) -> dict[str, Any]:
    """The peft config of each adapter on ``model``, in load order (empty when none)."""
    # Set by peft's inject_adapter_in_model on the model itself (not inherited from a class).
    return vars(model).get("peft_config") or {}


def adapter_names(model: PreTrainedModel) -> list[str]:
    """Names of the adapters on ``model``, in load order (empty when none)."""
    return list(adapter_configs(model))


def active_adapters(model: PreTrainedModel) -> list[str]:
    """Names of the adapters that run in ``model``'s forward pass (when enabled)."""
    layer = next(_tuner_layers(model), None)
    return list(layer.active_adapters) if layer is not None else []


def adapters_enabled(model: PreTrainedModel) -> bool:
    """False after ``disable_adapters()``: the model then runs as its base."""
    layer = next(_tuner_layers(model), None)
    return layer is not None and not layer.disable_adapters


def has_adapter_layers(model: PreTrainedModel) -> bool:
    """True when adapter layers wrap some of ``model``'s modules (its weights save differently)."""
    # No adapter layer exists before peft is imported (and peft may be absent).
    return "peft" in sys.modules and next(_wrapped_modules(model), None) is not None


def loaded(model: PreTrainedModel, adapter: str | Sequence[str], action: str) -> list[str]:
    """``adapter`` as a list of names, each checked to be loaded on ``model``.

    Raises:
        ValueError: No adapter is loaded, no name is given, or a name is not loaded.
    """
    names = [adapter] if isinstance(adapter, str) else list(adapter)
    known = adapter_names(model)
    if not known:
        raise ValueError(f"cannot {action}: the model has no adapter; load one with load_adapter first")
    if not names:
        raise ValueError(f"cannot {action}: no adapter name given; loaded adapters: {known}")
    unknown = [name for name in names if name not in known]
    if unknown:
        raise ValueError(f"unknown adapter(s) {unknown}; loaded adapters: {known}")
    return names


def activate(model: PreTrainedModel, names: Sequence[str], *, enabled: bool, trainable: bool = False) -> None:
    """Make ``names`` the active adapters of ``model`` and enable or disable adapters."""
    from peft.functional import set_adapter

    for module in _tuner_layers(model):
        module.enable_adapters(enabled)
    # After enable_adapters, which marks the active adapters trainable: inference unless asked.
    set_adapter(model, list(names), inference_mode=not trainable)


class AdapterState:
    """Which adapters exist, which are active, whether enabled or trainable: to put back later."""

    def __init__(self, names: list[str], active: list[str], enabled: bool, trainable: bool) -> None:
        self.names = names
        self.active = active
        self.enabled = enabled
        self.trainable = trainable

    @classmethod
    def of(cls, model: PreTrainedModel) -> AdapterState:
        """The adapter state of ``model`` now."""
        names = adapter_names(model)
        if not names:
            return cls([], [], True, False)
        trainable = any(parameter.requires_grad for parameter in _adapter_parameters(model))
        return cls(names, active_adapters(model), adapters_enabled(model), trainable)

    def restore(self, model: PreTrainedModel, active: Sequence[str] | None = None) -> None:
        """Put this state back on ``model`` (with ``active`` adapters instead, if given)."""
        if self.names:
            activate(model, self.active if active is None else active, enabled=self.enabled, trainable=self.trainable)


def inject(model: PreTrainedModel, name: str, adapter: AdapterFile) -> None:
    """Add ``adapter`` to ``model`` as ``name`` and check every tensor landed; on any error undo it.

    Raises:
        AdapterMismatchError: The adapter's keys or values do not all match the model.
    """
    from peft.functional import inject_adapter_in_model, set_peft_model_state_dict

    previous = AdapterState.of(model)
    try:
        with warnings.catch_warnings():
            # peft warns on every adapter after the first; several named adapters are the point here.
            warnings.filterwarnings("ignore", message="Already found a `peft_config` attribute")
            inject_adapter_in_model(adapter.config, model, name)
        set_peft_model_state_dict(model, adapter.state, adapter_name=name)
        _verify_landed(model, name, adapter)
    except BaseException:
        if previous.names:
            _remove(model, name)
            previous.restore(model)
        else:
            _unwrap(model, merge=None)
        raise
    model.train(model.training)  # the new layers (dropout) take the model's mode


def delete(model: PreTrainedModel, adapter: str | Sequence[str]) -> None:
    """Remove adapters; the others keep their state. Without any left, the plain modules come back.

    When an active adapter goes, the remaining active ones stay active, else the first loaded one.
    """
    names = loaded(model, adapter, "delete an adapter")
    previous = AdapterState.of(model)
    remaining = [name for name in previous.names if name not in names]
    if not remaining:
        _unwrap(model, merge=None)
        return
    for name in names:
        _remove(model, name)
    previous.restore(model, active=[name for name in previous.active if name in remaining] or remaining[:1])


def merge_and_unload(model: PreTrainedModel, adapter: str | Sequence[str] | None = None) -> list[str]:
    """Fold adapters into the base weights and remove every adapter layer.

    The result is a plain Qwen2-VL model: as fast as the base and saved as a plain checkpoint.

    Args:
        model: The Qwen2-VL model.
        adapter: The adapter(s) to merge; default the active one(s). The others are dropped.

    Returns:
        The merged adapters' names.

    Raises:
        ValueError: No adapter is loaded, or an unknown name.
    """
    names = loaded(model, active_adapters(model) if adapter is None else adapter, "merge an adapter")
    refuse_base_changes(model)
    dropped = [name for name in adapter_names(model) if name not in names]
    _unwrap(model, merge=names)
    if dropped:
        logger.warning("merge_and_unload merged %s and dropped the other adapters %s", names, dropped)
    return names


def base_state_dict(model: PreTrainedModel) -> dict[str, torch.Tensor]:
    """``model``'s state dict as if no adapter layer wrapped its modules."""
    wrapped = {path for path, _ in _wrapped_modules(model)}
    state = {}
    for key, value in model.state_dict().items():
        owner = _owning_layer(key, wrapped)
        if owner is None:
            state[key] = value
        elif key.startswith(f"{owner}.base_layer."):
            state[f"{owner}.{key.removeprefix(f'{owner}.base_layer.')}"] = value
    return state


def adapter_state_dict(model: PreTrainedModel, name: str) -> dict[str, torch.Tensor]:
    """Adapter ``name``'s weights, keyed by transformers 5 module paths (no wrapper prefix)."""
    from peft.functional import get_peft_model_state_dict

    state = get_peft_model_state_dict(model, adapter_name=name)
    return {modern_key(key): value for key, value in state.items()}


def refuse_base_changes(model: PreTrainedModel) -> None:
    """Raise if an adapter on ``model`` (e.g. injected with peft directly) also changes base modules."""
    for name, config in adapter_configs(model).items():
        reason = unsupported_reason(config)
        if reason:
            raise ValueError(f"adapter {name!r} {reason}")


def _tuner_layers(model: PreTrainedModel) -> Iterator[Any]:
    if adapter_configs(model):  # else no adapter was injected (and peft may be absent)
        yield from (layer for _, layer in _wrapped_modules(model))


def _wrapped_modules(model: PreTrainedModel) -> Iterator[tuple[str, Any]]:
    """Each adapter layer in ``model`` (a peft wrapper around a base module) with its path."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    for path, module in model.named_modules():
        if isinstance(module, BaseTunerLayer):
            yield path, module


def _adapter_parameters(model: PreTrainedModel) -> Iterator[torch.nn.Parameter]:
    for module in _tuner_layers(model):
        for layer_name in module.adapter_layer_names:
            yield from getattr(module, layer_name).parameters()


def _verify_landed(model: PreTrainedModel, name: str, adapter: AdapterFile) -> None:
    landed = adapter_state_dict(model, name)
    expected = adapter.state
    not_in_model = sorted(set(expected) - set(landed))
    not_in_file = sorted(set(landed) - set(expected))
    differing = sorted(key for key in set(expected) & set(landed) if not _same_tensor(landed[key], expected[key]))
    if not_in_model or not_in_file or differing:
        raise AdapterMismatchError(adapter.where, not_in_model, not_in_file, differing)


def _same_tensor(loaded: torch.Tensor, saved: torch.Tensor) -> bool:
    return loaded.shape == saved.shape and torch.equal(loaded.detach().cpu(), saved.to(loaded.dtype))


def _remove(model: PreTrainedModel, name: str) -> None:
    """Delete adapter ``name``'s layers and config (other adapters stay)."""
    from peft.functional import delete_adapter

    with warnings.catch_warnings():
        # peft picks a new active adapter and says so; the caller sets the active adapters itself.
        warnings.filterwarnings("ignore", message="Adapter .* was active which is now deleted")
        delete_adapter(model, name, prefix=_LORA_PREFIX)
    adapter_configs(model).pop(name, None)


def _unwrap(model: PreTrainedModel, merge: Sequence[str] | None) -> None:
    """Replace every adapter layer with its base layer, merging ``merge`` adapters into it first."""
    for path, module in list(_wrapped_modules(model)):
        if merge:
            module.merge(adapter_names=list(merge))
        parent, _, child = path.rpartition(".")
        setattr(model.get_submodule(parent), child, module.get_base_layer())
    vars(model).pop("peft_config", None)


def _owning_layer(key: str, layers: set[str]) -> str | None:
    """The longest module path in ``layers`` that ``key`` lies under."""
    parts = key.split(".")
    for end in range(len(parts) - 1, 0, -1):
        prefix = ".".join(parts[:end])
        if prefix in layers:
            return prefix
    return None
