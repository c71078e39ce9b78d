"""LoRA / DoRA adapters (peft) on a UME-R1 model: load strictly, switch, merge, save.

peft is optional (``pip install 'ume-plugins[peft]'``): nothing here imports it until an adapter is
used, so the core runs without it.

Adapters are injected into the module's ``Qwen2VLForConditionalGeneration`` in place, the way
transformers' own ``load_adapter`` does, so sentence-transformers' ``set_adapter``,
``disable_adapters``, ``enable_adapters``, ``active_adapters`` and ``delete_adapter`` work on them.
Loading is ours rather than transformers', because transformers only *logs* keys that did not
match (and in 5.x leaves DoRA magnitudes at their initial values). Here:

- Keys saved under transformers 4.x module names (``model.layers.*``, ``visual.*``) are mapped to
  the 5.x names (``model.language_model.layers.*``, ``model.visual.*``).
- After loading, every tensor of the adapter file is compared with what landed in the model; any
  key left over on either side, or any value that differs, raises :class:`AdapterMismatchError`
  listing them, and the model is left as it was.
- Only safetensors weights are read: a pickled ``adapter_model.bin`` is refused.
"""

from __future__ import annotations

import functools
import importlib.util
import logging
import os
import posixpath
import re
import sys
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from transformers import PreTrainedModel

logger = logging.getLogger(__name__)

PEFT_INSTALL = "pip install 'ume-plugins[peft]'"
ADAPTERS_KEY = "adapters"
ADAPTERS_DIR = "adapters"
ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
PICKLED_WEIGHTS = "adapter_model.bin"
PEFT_PREFIX = "base_model.model."
REQUIREMENTS: dict[str, dict[str, str]] = {
    "transformers": {"specifier": ">=5.0", "reason": "UME-R1 modules use the transformers 5 Qwen2-VL layout."},
}
ADAPTER_REQUIREMENTS: dict[str, dict[str, str]] = {
    "peft": {"specifier": ">=0.20", "reason": f"The model carries LoRA adapters: {PEFT_INSTALL}"},
}
# transformers 4.x kept the Qwen2-VL decoder at `model.` and the vision tower at `visual.`;
# 5.x moved them to `model.language_model.` and `model.visual.`.
_LEGACY_RENAMES = (
    (re.compile(r"^visual\."), "model.visual."),
    (re.compile(r"^model\.(?!language_model\.|visual\.)"), "model.language_model."),
)
_HUB_ID = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*(/[A-Za-z0-9_][A-Za-z0-9_.-]*)?$")
_ADAPTER_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
_MAX_LISTED = 20


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


@functools.cache
def is_peft_available() -> bool:
    """True when peft can be imported (probed once)."""
    try:
        return importlib.util.find_spec("peft") is not None
    except (ImportError, ValueError):
        return False


def require_peft() -> None:
    """Raise an ImportError naming the install line when peft is missing."""
    if not is_peft_available():
        raise ImportError(f"LoRA adapters need peft: {PEFT_INSTALL}")


def modern_key(key: str) -> str:
    """Map a Qwen2-VL module path from transformers 4.x to 5.x names (5.x names pass unchanged)."""
    for pattern, replacement in _LEGACY_RENAMES:
        key = pattern.sub(replacement, key, count=1)
    return key


def adapter_names(model: PreTrainedModel) -> list[str]:
    """Names of the adapters on ``model``, in load order (empty when none)."""
    if not getattr(model, "_hf_peft_config_loaded", False):
        return []
    return list(getattr(model, "peft_config", {}))


def active_adapters(model: PreTrainedModel) -> list[str]:
    """Names of the adapters that run in ``model``'s forward pass (when enabled)."""
    layer = _first_tuner_layer(model)
    return list(layer.active_adapters) if layer is not None else []


def adapters_enabled(model: PreTrainedModel) -> bool:
    """False after ``disable_adapters()``: the model then runs as its base."""
    layer = _first_tuner_layer(model)
    return layer is not None and not layer.disable_adapters


def load_adapter(
    model: PreTrainedModel,
    source: str | os.PathLike,
    adapter_name: str | None = None,
    *,
    subfolder: str = "",
    revision: str | None = None,
    token: bool | str | None = None,
    cache_folder: str | None = None,
    local_files_only: bool = False,
) -> str:
    """Load a LoRA/DoRA adapter into ``model`` in place, check every weight landed, and activate it.

    Args:
        model: The Qwen2-VL model.
        source: A local adapter folder or a hub repository id (``adapter_config.json`` plus
            ``adapter_model.safetensors``, as peft's ``save_pretrained`` writes them).
        adapter_name: Name to load it under (default ``"default"``); letters, digits, ``_.-``.
        subfolder: Folder of the adapter inside ``source``.
        revision: Hub revision of ``source``.
        token: Hub token.
        cache_folder: Hub cache directory.
        local_files_only: Never reach the hub.

    Returns:
        The adapter's name.

    Raises:
        ImportError: peft is not installed.
        AdapterMismatchError: The adapter's keys or values do not all match the model.
        ValueError: The name is taken or invalid, the adapter is not LoRA/DoRA, changes base weights
            (``bias``, ``modules_to_save``, trainable tokens), or has only pickled weights.
        FileNotFoundError: ``source`` is a local path without an adapter.
    """
    require_peft()
    from peft import PeftConfig
    from peft.functional import inject_adapter_in_model, set_peft_model_state_dict
    from safetensors.torch import load_file

    source = os.fspath(source)
    name = check_adapter_name(adapter_name or "default")
    if name in adapter_names(model):
        raise ValueError(f"an adapter named {name!r} is already loaded; pass another adapter_name")
    where = f"{source}/{subfolder}" if subfolder else source
    config_path, weights_path = _adapter_files(
        source,
        subfolder,
        revision=revision,
        token=token,
        cache_folder=cache_folder,
        local_files_only=local_files_only,
    )
    config = PeftConfig.from_pretrained(os.path.dirname(config_path))
    _check_supported(config, where)
    config.inference_mode = True
    if isinstance(config.target_modules, (list, set)):
        config.target_modules = sorted(modern_key(target) for target in config.target_modules)
    state = {}
    renamed = 0
    for key, value in load_file(weights_path).items():
        key = key.removeprefix(PEFT_PREFIX)
        state[modern_key(key)] = value
        renamed += modern_key(key) != key
    if renamed:
        logger.info("Mapped %d transformers 4.x keys of adapter %s to transformers 5 module names", renamed, where)

    previous = _Snapshot.of(model)
    try:
        with warnings.catch_warnings():
            # peft warns on every adapter after the first; several named adapters are the point here.
            warnings.filterwarnings("ignore", message="Already found a `peft_config` attribute")
            inject_adapter_in_model(config, model, name)
        set_peft_model_state_dict(model, state, adapter_name=name)
        _verify_landed(model, name, state, where)
    except BaseException:
        _discard(model, name, previous)
        raise
    model._hf_peft_config_loaded = True  # what transformers' integration reads (set_adapter, ...)
    model.train(model.training)  # the new layers (dropout) take the model's mode
    activate(model, [name], enabled=True)
    logger.info("Loaded adapter %r from %s (%d tensors)", name, where, len(state))
    return name


def activate(model: PreTrainedModel, names: Sequence[str], *, enabled: bool, trainable: bool = False) -> None:
    """Make ``names`` the active adapters of ``model`` and enable or disable adapters."""
    from peft.functional import set_adapter

    for module in _tuner_layers(model):
        module.enable_adapters(enabled)
    set_adapter(model, list(names), inference_mode=not trainable)


@contextmanager
def using_adapter(model: PreTrainedModel, adapter: str | Sequence[str] | None) -> Iterator[None]:
    """Run the block with ``adapter`` active and enabled, then restore the previous adapter state.

    Args:
        model: The Qwen2-VL model.
        adapter: An adapter name or several (combined); None leaves the model as it is.

    Raises:
        ValueError: No adapter is loaded, or one of the names is not loaded.
    """
    if adapter is None:
        yield
        return
    names = [adapter] if isinstance(adapter, str) else list(adapter)
    loaded = adapter_names(model)
    if not loaded:
        raise ValueError(f"adapter={adapter!r} was given but the model has no adapter; load one first")
    unknown = [name for name in names if name not in loaded]
    if unknown:
        raise ValueError(f"unknown adapter(s) {unknown}; loaded adapters: {loaded}")
    previous = _Snapshot.of(model)
    activate(model, names, enabled=True)
    try:
        yield
    finally:
        previous.restore(model)


def per_call_adapter(forward: Callable[..., Any]) -> Callable[..., Any]:
    """Give a module's ``forward`` an ``adapter=`` keyword: those adapters run for that call only."""

    @functools.wraps(forward)
    def wrapper(
        self: Any, features: dict[str, Any], *args: Any, adapter: str | Sequence[str] | None = None, **kwargs: Any
    ) -> Any:
        with using_adapter(self.model, adapter):
            return forward(self, features, *args, **kwargs)

    return wrapper


def merge_and_unload(model: PreTrainedModel, adapter_name: str | Sequence[str] | None = None) -> list[str]:
    """Fold adapter weights into the base weights and remove every adapter layer.

    The result is a plain Qwen2-VL model: as fast as the base and saved as a plain checkpoint.

    Args:
        model: The Qwen2-VL model.
        adapter_name: The adapter(s) to merge; default the active one(s). The others are dropped.

    Returns:
        The merged adapters' names.

    Raises:
        ValueError: No adapter is loaded, or an unknown name.
    """
    loaded = adapter_names(model)
    if not loaded:
        raise ValueError("the model has no adapter to merge")
    names = active_adapters(model) if adapter_name is None else adapter_name
    names = [names] if isinstance(names, str) else list(names)
    unknown = [name for name in names if name not in loaded]
    if unknown:
        raise ValueError(f"unknown adapter(s) {unknown}; loaded adapters: {loaded}")
    _unwrap(model, merge=names)
    dropped = [name for name in loaded if name not in names]
    if dropped:
        logger.warning("merge_and_unload merged %s and dropped the other adapters %s", names, dropped)
    return names


def has_adapter_layers(model: PreTrainedModel) -> bool:
    """True when adapter layers wrap some of ``model``'s modules (its weights save differently).

    Deleting every adapter (``delete_adapter``) leaves empty wrappers behind, so this looks at the
    modules rather than at the adapters' configs.
    """
    if "peft" not in sys.modules:  # no adapter layer exists before peft is imported
        return False
    return any(_is_tuner_layer(module) for module in model.modules())


def save_adapted_model(model: PreTrainedModel, output_path: str) -> None:
    """Save the base weights as a plain checkpoint and each adapter under ``adapters/<name>/``.

    The adapters' names and state go with the module's settings (see :func:`adapter_record`).
    """
    from peft.functional import get_peft_model_state_dict
    from safetensors.torch import save_file

    _refuse_auxiliary(model)
    # With the flag set, transformers' save_pretrained writes only the active adapter.
    flag = getattr(model, "_hf_peft_config_loaded", False)
    model._hf_peft_config_loaded = False
    try:
        model.save_pretrained(output_path, state_dict=_base_state_dict(model))
    finally:
        model._hf_peft_config_loaded = flag
    for name in adapter_names(model):
        folder = os.path.join(output_path, ADAPTERS_DIR, check_adapter_name(name))
        os.makedirs(folder, exist_ok=True)
        state = get_peft_model_state_dict(model, adapter_name=name)
        tensors = {PEFT_PREFIX + key: value.detach().cpu().contiguous() for key, value in state.items()}
        save_file(tensors, os.path.join(folder, ADAPTER_WEIGHTS), metadata={"format": "pt"})
        model.peft_config[name].save_pretrained(folder)


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
    **hub_kwargs: Any,
) -> None:
    """Reload the adapters a saved model recorded, with their active and enabled state.

    Args:
        model: The Qwen2-VL model.
        record: What :func:`adapter_record` gave when the model was saved.
        source: The saved model's folder or hub id.
        subfolder: The module's folder inside ``source``.
        **hub_kwargs: ``revision``, ``token``, ``cache_folder``, ``local_files_only``.

    Raises:
        ValueError: The record is malformed.
    """
    names, active = list(record.get("names", [])), list(record.get("active", []))
    if not names or not set(active) <= set(names) or not isinstance(record.get("enabled"), bool):
        raise ValueError(f"malformed saved adapter record in {source}: {dict(record)}")
    for name in names:
        folder = posixpath.join(subfolder, ADAPTERS_DIR, check_adapter_name(name))
        load_adapter(model, source, name, subfolder=folder, **hub_kwargs)
    activate(model, active, enabled=record["enabled"])


def check_adapter_name(name: str) -> str:
    """Return ``name`` if it is safe as a folder name, else raise ValueError."""
    if not isinstance(name, str) or not _ADAPTER_NAME.match(name) or name in {".", ".."}:
        raise ValueError(f"adapter names are letters, digits and _.-, starting with a letter or digit; got {name!r}")
    return name


class AdapterMixin:
    """Adapter methods of a sentence-transformers module that holds a transformers model as ``self.model``.

    ``SentenceTransformer.load_adapter`` is routed here (see :mod:`ume_plugins.loading`);
    ``set_adapter``, ``disable_adapters``, ``enable_adapters``, ``active_adapters`` and
    ``delete_adapter`` work through sentence-transformers as they are. The adapters' state is saved
    with the module's settings (key ``"adapters"``) and their weights under ``adapters/<name>/``.
    """

    model: PreTrainedModel

    @property
    def adapter_names(self) -> list[str]:
        """Names of the loaded adapters, in load order."""
        return adapter_names(self.model)

    def load_adapter(
        self,
        peft_model_id: str | os.PathLike,
        adapter_name: str | None = None,
        *,
        subfolder: str = "",
        revision: str | None = None,
        token: bool | str | None = None,
        cache_folder: str | None = None,
        local_files_only: bool = False,
    ) -> str:
        """Load a LoRA/DoRA adapter (local folder or hub id) and make it the active one.

        Every weight of the adapter file is checked to have landed in the model; see
        :func:`load_adapter` for the arguments and errors.

        Returns:
            The adapter's name.
        """
        return load_adapter(
            self.model,
            peft_model_id,
            adapter_name,
            subfolder=subfolder,
            revision=revision,
            token=token,
            cache_folder=cache_folder,
            local_files_only=local_files_only,
        )

    def load_adapters(
        self, adapter: str | os.PathLike | Mapping[str, str | os.PathLike], **hub_kwargs: Any
    ) -> list[str]:
        """Load one adapter (as ``"default"``) or several named ones; the first becomes active.

        Args:
            adapter: A folder or hub id, or a mapping of adapter names to folders or hub ids.
            **hub_kwargs: ``token``, ``cache_folder``, ``local_files_only``.

        Returns:
            The names loaded.
        """
        sources = {"default": adapter} if isinstance(adapter, (str, os.PathLike)) else dict(adapter)
        if not sources:
            raise ValueError("adapter= was given an empty mapping")
        names = [self.load_adapter(source, name, **hub_kwargs) for name, source in sources.items()]
        activate(self.model, names[:1], enabled=True)
        return names

    def merge_and_unload(self, adapter_name: str | Sequence[str] | None = None) -> list[str]:
        """Fold an adapter into the base weights (faster encoding) and remove all adapter layers.

        Args:
            adapter_name: The adapter(s) to merge; default the active one(s). Others are dropped.

        Returns:
            The merged adapters' names.
        """
        return merge_and_unload(self.model, adapter_name)

    def requirements(self) -> dict[str, dict[str, str]]:
        """Package requirements of this model as saved (``config_sentence_transformers.json``)."""
        if adapter_names(self.model):
            return {**REQUIREMENTS, **ADAPTER_REQUIREMENTS}
        return dict(REQUIREMENTS)

    def get_config_dict(self) -> dict[str, Any]:
        """The module's settings, plus the adapters' record when adapters are loaded."""
        config = super().get_config_dict()
        record = adapter_record(self.model)
        if record is not None:
            config[ADAPTERS_KEY] = record
        return config


class _Snapshot:
    """Which adapters exist, which are active, whether enabled or trainable: to put back later."""

    def __init__(self, names: list[str], active: list[str], enabled: bool, trainable: bool) -> None:
        self.names = names
        self.active = active
        self.enabled = enabled
        self.trainable = trainable

    @classmethod
    def of(cls, model: PreTrainedModel) -> _Snapshot:
        names = adapter_names(model)
        if not names:
            return cls([], [], True, False)
        trainable = any(
            parameter.requires_grad for module in _tuner_layers(model) for parameter in _adapter_parameters(module)
        )
        return cls(names, active_adapters(model), adapters_enabled(model), trainable)

    def restore(self, model: PreTrainedModel) -> None:
        if self.names:
            activate(model, self.active, enabled=self.enabled, trainable=self.trainable)


def _adapter_files(
    source: str,
    subfolder: str,
    *,
    revision: str | None,
    token: bool | str | None,
    cache_folder: str | None,
    local_files_only: bool,
) -> tuple[str, str]:
    local = os.path.join(os.path.expanduser(source), subfolder) if subfolder else os.path.expanduser(source)
    where = f"{source}/{subfolder}" if subfolder else source
    if os.path.isdir(local):
        config_path = os.path.join(local, ADAPTER_CONFIG)
        weights_path = os.path.join(local, ADAPTER_WEIGHTS)
        if not os.path.isfile(config_path):
            raise FileNotFoundError(f"{where} has no {ADAPTER_CONFIG}: not a peft adapter folder")
        if not os.path.isfile(weights_path):
            raise _missing_weights(where, pickled=os.path.isfile(os.path.join(local, PICKLED_WEIGHTS)))
        return config_path, weights_path
    if os.path.exists(local) or not _HUB_ID.match(source):
        raise FileNotFoundError(f"no adapter folder at {where}")

    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError, LocalEntryNotFoundError

    hub_kwargs = {
        "repo_id": source,
        "subfolder": subfolder or None,
        "revision": revision,
        "token": token,
        "cache_dir": cache_folder,
        "local_files_only": local_files_only,
    }
    config_path = hf_hub_download(filename=ADAPTER_CONFIG, **hub_kwargs)
    try:
        weights_path = hf_hub_download(filename=ADAPTER_WEIGHTS, **hub_kwargs)
    except EntryNotFoundError as error:
        if isinstance(error, LocalEntryNotFoundError):
            raise
        raise _missing_weights(where, pickled=None) from None
    return config_path, weights_path


def _missing_weights(where: str, pickled: bool | None) -> Exception:
    refusal = (
        f"only safetensors adapter weights ({ADAPTER_WEIGHTS}) are loaded: a pickled {PICKLED_WEIGHTS} "
        "can run arbitrary code, so it is refused. Convert it where you trust it, e.g. "
        "`safetensors.torch.save_file(torch.load(path, weights_only=True), 'adapter_model.safetensors')`."
    )
    if pickled is False:
        return FileNotFoundError(f"{where} has no {ADAPTER_WEIGHTS}")
    return ValueError(f"{where} has no {ADAPTER_WEIGHTS}; {refusal}")


def _check_supported(config: Any, where: str) -> None:
    from peft import PeftType

    if config.peft_type != PeftType.LORA:
        raise ValueError(f"adapter {where} is {config.peft_type}; only LoRA and DoRA adapters are supported")
    # These change base weights or whole modules, which adapters switched per call cannot undo.
    if getattr(config, "bias", "none") != "none":
        raise ValueError(f"adapter {where} trains biases (bias={config.bias!r}); merge it into a checkpoint with peft")
    for field in ("modules_to_save", "trainable_token_indices"):
        if getattr(config, field, None):
            raise ValueError(f"adapter {where} sets {field}; merge it into a checkpoint with peft")


def _verify_landed(model: PreTrainedModel, name: str, expected: Mapping[str, torch.Tensor], where: str) -> None:
    from peft.functional import get_peft_model_state_dict

    landed = {modern_key(key): value for key, value in get_peft_model_state_dict(model, adapter_name=name).items()}
    not_in_model = sorted(set(expected) - set(landed))
    not_in_file = sorted(set(landed) - set(expected))
    differing = sorted(key for key in set(expected) & set(landed) if not _same_tensor(landed[key], expected[key]))
    if not_in_model or not_in_file or differing:
        raise AdapterMismatchError(where, not_in_model, not_in_file, differing)


def _same_tensor(loaded: torch.Tensor, saved: torch.Tensor) -> bool:
    return loaded.shape == saved.shape and torch.equal(loaded.detach().cpu(), saved.to(loaded.dtype))


def _discard(model: PreTrainedModel, name: str, previous: _Snapshot) -> None:
    """Undo a failed load: remove adapter ``name`` and restore the previous adapter state."""
    if not previous.names:
        _unwrap(model, merge=None)
        return
    from peft.functional import delete_adapter

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Adapter .* was active which is now deleted")
        delete_adapter(model, name, prefix="lora_")
    model.peft_config.pop(name, None)
    previous.restore(model)


def _unwrap(model: PreTrainedModel, merge: Sequence[str] | None) -> None:
    """Replace every adapter layer with its base layer, merging ``merge`` adapters into it first."""
    _refuse_auxiliary(model)
    for name, module in list(model.named_modules()):
        if not _is_tuner_layer(module):
            continue
        if merge:
            module.merge(adapter_names=[adapter for adapter in merge if adapter in module._get_available_adapters()])
        parent, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent), child, module.get_base_layer())
    if "peft_config" in model.__dict__:
        del model.peft_config
    model._hf_peft_config_loaded = False


def _base_state_dict(model: PreTrainedModel) -> dict[str, torch.Tensor]:
    """``model``'s state dict as if no adapter layer wrapped its modules."""
    wrapped = {name for name, module in model.named_modules() if _is_tuner_layer(module)}
    state = {}
    for key, value in model.state_dict().items():
        owner = _owning_layer(key, wrapped)
        if owner is None:
            state[key] = value
        elif key.startswith(f"{owner}.base_layer."):
            state[f"{owner}.{key.removeprefix(f'{owner}.base_layer.')}"] = value
    return state


def _owning_layer(key: str, layers: set[str]) -> str | None:
    """The longest module path in ``layers`` that ``key`` lies under."""
    parts = key.split(".")
    for end in range(len(parts) - 1, 0, -1):
        prefix = ".".join(parts[:end])
        if prefix in layers:
            return prefix
    return None


def _refuse_auxiliary(model: PreTrainedModel) -> None:
    from peft.utils.other import AuxiliaryTrainingWrapper

    if any(isinstance(module, AuxiliaryTrainingWrapper) for module in model.modules()):
        raise ValueError("adapters with modules_to_save or trainable tokens are not supported here")


def _is_tuner_layer(module: torch.nn.Module) -> bool:
    from peft.tuners.tuners_utils import BaseTunerLayer

    return isinstance(module, BaseTunerLayer)


def _tuner_layers(model: PreTrainedModel) -> list[Any]:
    if "peft_config" not in model.__dict__:  # no adapter was ever injected (and peft may be absent)
        return []
    return [module for module in model.modules() if _is_tuner_layer(module)]


def _first_tuner_layer(model: PreTrainedModel) -> Any | None:
    layers = _tuner_layers(model)
    return layers[0] if layers else None


def _adapter_parameters(module: Any) -> Iterator[torch.nn.Parameter]:
    for layer_name in module.adapter_layer_names:
        yield from getattr(module, layer_name).parameters()
