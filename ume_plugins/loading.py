"""``ume_plugins.load``: any UME-R1 checkpoint as a SentenceTransformer, with settings, policy and adapters."""

from __future__ import annotations

import difflib
import inspect
from collections.abc import Mapping
from typing import Any

from sentence_transformers import SentenceTransformer

from ume_plugins.checkpoints import MODULE_CLASS_REF, check_local_path, is_ume_r1_checkpoint
from ume_plugins.device import check_device
from ume_plugins.engine import BACKENDS
from ume_plugins.engine.vllm import require_vllm
from ume_plugins.model import UMESentenceTransformer
from ume_plugins.policy import POLICY_OPTIONS, InputPolicy
from ume_plugins.settings import SETTING_NAMES, check_mode

__all__ = ["MODULE_CLASS_REF", "is_ume_r1_checkpoint", "load"]


def load(
    name_or_path: str,
    mode: str | None = None,
    device: str | None = None,
    adapter: str | Mapping[str, str] | None = None,
    **kwargs: Any,
) -> UMESentenceTransformer:
    """Load any UME-R1 checkpoint as a SentenceTransformer.

    Args:
        name_or_path: An alias (``"ume-r1"``, ``"ume-r1-2b"``, ``"ume-r1-7b"``, ``"ume-r1-tiny"``),
            a hub id, a saved sentence-transformers folder, or a raw UME-R1 checkpoint directory
            (a Qwen2-VL checkpoint whose tokenizer has ``<gen_emb>`` and ``<disc_emb>``).
        mode: Default embedding mode (``"generative"``, ``"discriminative"`` or ``"both"``);
            None keeps the saved one.
        device: Device to load on; precision follows it unless ``model_kwargs`` pins a dtype.
        adapter: LoRA/DoRA adapter(s) to load (needs ``pip install 'ume-plugins[peft]'``): a local
            folder or hub id (loaded as ``"default"``), or a mapping of names to folders or hub ids;
            the first becomes the active adapter. Every weight is checked to have landed.
        **kwargs: Any of, by kind:

            - embedding settings, saved with the model (:class:`~ume_plugins.settings.EmbeddingSettings`:
              ``max_new_tokens``, ``num_frames``, ``max_length``, ...);
            - the input policy, never saved (``allow_network``, ``allow_file_urls``, ``url_timeout``,
              ``max_url_bytes``, ``max_decoded_pixels``; see :mod:`ume_plugins.policy`);
            - the generative engine, never saved (``backend="hf"|"vllm"``, ``vllm_kwargs``);
            - ``SentenceTransformer`` arguments (``model_kwargs``, ``revision``, ``prompts``, ...).

    Returns:
        A :class:`~ume_plugins.model.UMESentenceTransformer`.

    Raises:
        ValueError: The checkpoint is not UME-R1 or its folder is missing, the device is not there,
            or a setting or option is invalid.
        TypeError: An option no part of it takes (the closest known ones are suggested).
        ImportError: ``backend="vllm"`` without vLLM installed.
        ~ume_plugins.adapters.AdapterMismatchError: An adapter does not match the model.
    """
    check_local_path(name_or_path)
    check_device(device)
    _check_option_names(kwargs)
    settings = {key: kwargs.pop(key) for key in list(kwargs) if key in SETTING_NAMES}
    if mode is not None:
        settings["mode"] = check_mode(mode)  # refused before any weight is read
    policy = InputPolicy().with_options(**{key: kwargs.pop(key) for key in list(kwargs) if key in POLICY_OPTIONS})
    backend, vllm_kwargs = kwargs.pop("backend", "hf"), kwargs.pop("vllm_kwargs", None)
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if backend == "vllm":
        require_vllm()  # missing vLLM is said at load, with what to install, not at the first encode
    model = UMESentenceTransformer(name_or_path, device=device, **kwargs)
    module = model[0]
    module.policy, module.backend, module.vllm_kwargs = policy, backend, vllm_kwargs
    module.settings = module.settings.replace(**settings)  # rebuilds the engine: settings and backend checked together
    if adapter is not None:
        # The hub options, but not the revision: that one is the model's.
        hub = {key: kwargs[key] for key in ("token", "cache_folder", "local_files_only") if key in kwargs}
        module.load_adapters(adapter, **hub)
    return model


def _check_option_names(options: Mapping[str, Any]) -> None:
    """Refuse an option no part of ``load`` takes, suggesting the closest one (a typo must not pass).

    Raises:
        TypeError: Names each unknown option.
    """
    known = set(SETTING_NAMES) | set(POLICY_OPTIONS) | {"backend", "vllm_kwargs"}
    known |= set(inspect.signature(SentenceTransformer.__init__).parameters) - {"self", "model_name_or_path"}
    unknown = sorted(set(options) - known)
    if unknown:
        closest = {name: difflib.get_close_matches(name, known, n=1) for name in unknown}
        hints = [f"{name} (did you mean {match[0]}?)" if match else name for name, match in closest.items()]
        raise TypeError(f"ume_plugins.load got unknown option(s): {'; '.join(hints)}")
