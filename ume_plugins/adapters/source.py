"""Reading a peft adapter folder (local or hub): safetensors only, LoRA/DoRA only, legacy keys mapped."""

from __future__ import annotations

import functools
import importlib.util
import logging
import os
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ume_plugins.checkpoints import HubOptions

if TYPE_CHECKING:
    import torch
    from peft import PeftConfig

logger = logging.getLogger(__name__)

PEFT_INSTALL = "pip install 'ume-plugins[peft]'"
ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
PICKLED_WEIGHTS = "adapter_model.bin"
# peft's save_pretrained prefixes every key with the PeftModel wrapper's path.
PEFT_PREFIX = "base_model.model."
# transformers 4.x kept the Qwen2-VL decoder at `model.` and the vision tower at `visual.`;
# 5.x moved them to `model.language_model.` and `model.visual.`.
_LEGACY_RENAMES = (
    (re.compile(r"^visual\."), "model.visual."),
    (re.compile(r"^model\.(?!language_model\.|visual\.)"), "model.language_model."),
)
_HUB_ID = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*(/[A-Za-z0-9_][A-Za-z0-9_.-]*)?$")
_ADAPTER_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


@dataclass(frozen=True)
class AdapterFile:
    """A LoRA/DoRA adapter read from disk or the hub, ready to inject.

    Attributes:
        config: peft's config, in inference mode, with transformers 5 module names.
        state: The weights, keyed as peft's ``set_peft_model_state_dict`` takes them (no wrapper prefix).
        where: The source and subfolder, for messages.
    """

    config: PeftConfig
    state: dict[str, torch.Tensor]
    where: str


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


def check_adapter_name(name: str) -> str:
    """Return ``name`` if it is safe as a folder name, else raise ValueError."""
    if not isinstance(name, str) or not _ADAPTER_NAME.match(name) or name in {".", ".."}:
        raise ValueError(f"adapter names are letters, digits and _.-, starting with a letter or digit; got {name!r}")
    return name


def unsupported_reason(config: Any) -> str | None:
    """Why an adapter config cannot be switched per call or saved beside plain base weights (None: it can)."""
    from peft import PeftType

    if config.peft_type != PeftType.LORA:
        return f"is {config.peft_type}; only LoRA and DoRA adapters are supported"
    # These change base weights or whole modules, which adapters switched per call cannot undo.
    if getattr(config, "bias", "none") != "none":
        return f"trains biases (bias={config.bias!r}); merge it into a checkpoint with peft"
    for field in ("modules_to_save", "trainable_token_indices"):
        if getattr(config, field, None):
            return f"sets {field}; merge it into a checkpoint with peft"
    return None


def read_adapter(source: str | os.PathLike, subfolder: str = "", hub: HubOptions | None = None) -> AdapterFile:
    """Read an adapter's config and safetensors weights, with transformers 4.x names mapped to 5.x.

    Args:
        source: A local adapter folder or a hub repository id.
        subfolder: Folder of the adapter inside ``source``.
        hub: How a hub ``source`` is fetched (revision, token, cache folder, offline).

    Returns:
        The adapter, ready to inject.

    Raises:
        ImportError: peft is not installed.
        ValueError: The adapter is not a supported LoRA/DoRA adapter, or has only pickled weights.
        FileNotFoundError: ``source`` is a local path without an adapter.
    """
    require_peft()
    from peft import PeftConfig
    from safetensors.torch import load_file

    source = os.fspath(source)
    where = f"{source}/{subfolder}" if subfolder else source
    config_path, weights_path = _adapter_files(source, subfolder, where, hub or HubOptions())
    config = PeftConfig.from_pretrained(os.path.dirname(config_path))
    reason = unsupported_reason(config)
    if reason:
        raise ValueError(f"adapter {where} {reason}")
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
    return AdapterFile(config, state, where)


def _adapter_files(source: str, subfolder: str, where: str, hub: HubOptions) -> tuple[str, str]:
    local = os.path.join(os.path.expanduser(source), subfolder) if subfolder else os.path.expanduser(source)
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

    hub_kwargs = {"repo_id": source, "subfolder": subfolder or None, **hub.for_transformers()}
    config_path = hf_hub_download(filename=ADAPTER_CONFIG, **hub_kwargs)
    try:
        weights_path = hf_hub_download(filename=ADAPTER_WEIGHTS, **hub_kwargs)
    except EntryNotFoundError as error:
        if isinstance(error, LocalEntryNotFoundError):
            raise
        raise _missing_weights(where, pickled=None) from None
    return config_path, weights_path


def _missing_weights(where: str, pickled: bool | None) -> Exception:
    if pickled is False:
        return FileNotFoundError(f"{where} has no {ADAPTER_WEIGHTS}")
    return ValueError(
        f"{where} has no {ADAPTER_WEIGHTS}; only safetensors adapter weights are loaded: a pickled "
        f"{PICKLED_WEIGHTS} can run arbitrary code, so it is refused. Convert it where you trust it, e.g. "
        "`safetensors.torch.save_file(torch.load(path, weights_only=True), 'adapter_model.safetensors')`."
    )
