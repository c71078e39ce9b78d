"""LoRA / DoRA adapters (peft) on a UME-R1 model: load strictly, switch, merge, save.

peft is optional (``pip install 'ume-plugins[peft]'``): nothing here imports it until an adapter is
used, so the core runs without it. Only peft's public API is used (``peft.functional``, configs,
the tuner-layer base class), never transformers' peft integration: transformers 5.24 refuses
peft < 0.22 there although peft's own API works. So the supported adapter API is the module's
methods (:class:`AdapterMixin`: ``model[0].load_adapter(...)``, ``set_adapter``, ...) and
``ume_plugins.load(..., adapter=...)``, not ``SentenceTransformer.load_adapter`` and its siblings.

Loading is strict, unlike transformers' (which only *logs* keys that did not match and in 5.x
leaves DoRA magnitudes at their initial values):

- Keys saved under transformers 4.x module names (``model.layers.*``, ``visual.*``) are mapped to
  the 5.x names (``model.language_model.layers.*``, ``model.visual.*``).
- After loading, every tensor of the adapter file is compared with what landed in the model; any
  key left over on either side, or any value that differs, raises :class:`AdapterMismatchError`
  listing them, and the model is left as it was.
- Only safetensors weights are read: a pickled ``adapter_model.bin`` is refused.

Files: ``source`` reads adapter folders, ``layers`` works on the adapter layers in a model,
``store`` loads and saves, ``mixin`` holds the module's methods and per-call ``adapter=``.
"""

from __future__ import annotations

from ume_plugins.adapters.layers import (
    AdapterMismatchError,
    activate,
    active_adapters,
    adapter_names,
    adapters_enabled,
    has_adapter_layers,
    merge_and_unload,
)
from ume_plugins.adapters.mixin import (
    ADAPTER_REQUIREMENTS,
    REQUIREMENTS,
    AdapterMixin,
    per_call_adapter,
    using_adapter,
)
from ume_plugins.adapters.source import (
    PEFT_INSTALL,
    check_adapter_name,
    is_peft_available,
    modern_key,
    require_peft,
)
from ume_plugins.adapters.store import (
    ADAPTERS_DIR,
    ADAPTERS_KEY,
    adapter_record,
    load_adapter,
    load_saved_adapters,
    save_adapted_model,
    save_weights,
)

__all__ = [
    "ADAPTERS_DIR",
    "ADAPTERS_KEY",
    "ADAPTER_REQUIREMENTS",
    "PEFT_INSTALL",
    "REQUIREMENTS",
    "AdapterMismatchError",
    "AdapterMixin",
    "activate",
    "active_adapters",
    "adapter_names",
    "adapter_record",
    "adapters_enabled",
    "check_adapter_name",
    "has_adapter_layers",
    "is_peft_available",
    "load_adapter",
    "load_saved_adapters",
    "merge_and_unload",
    "modern_key",
    "per_call_adapter",
    "require_peft",
    "save_adapted_model",
    "save_weights",
    "using_adapter",
]
