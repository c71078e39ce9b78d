"""How names and folders become UME-R1 SentenceTransformers.

sentence-transformers has no plugin registry, so importing :mod:`ume_plugins` installs six
narrow hooks on ``SentenceTransformer`` (each a no-op for every other model):

1. ``_module_classes`` maps our module's class reference to the class, so saved UME-R1 folders
   load without ``trust_remote_code`` (only that class is trusted; any other custom class still
   needs the flag).
2. ``__init__`` resolves our aliases (``"ume-r1"``, ``"ume-r1-2b"``, ``"ume-r1-7b"``,
   ``"ume-r1-tiny"``) and pins the revision of the UME-R1 hub ids.
3. ``_load_default_modules`` builds :class:`~ume_plugins.module.UMER1Embedder` for a raw UME-R1
   checkpoint instead of the default mean-pooling stack.
4. ``encode`` checks every input's structure before any batch runs and makes errors name the
   input's index in the caller's list.
5. ``load_adapter`` goes to :meth:`~ume_plugins.adapters.AdapterMixin.load_adapter`, which checks
   that every weight of the adapter landed (transformers' own only logs mismatches).
6. ``_get_model_config`` writes the module's package ``requirements`` (transformers, and peft when
   adapters are saved) to ``config_sentence_transformers.json``, checked before weights load.
"""

from __future__ import annotations

import functools
import json
import os
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

from sentence_transformers import SentenceTransformer
from sentence_transformers.util import load_file_path

from ume_plugins.checkpoints import ALIASES, resolve_name
from ume_plugins.inputs import located
from ume_plugins.module import UMER1Embedder

MODULE_CLASS_REF = f"{UMER1Embedder.__module__}.{UMER1Embedder.__qualname__}"
_REQUIRED_TOKENS = ("<gen_emb>", "<disc_emb>")


def load(
    name_or_path: str,
    mode: str | None = None,
    device: str | None = None,
    adapter: str | Mapping[str, str] | None = None,
    **kwargs: Any,
) -> SentenceTransformer:
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
        **kwargs: Module settings (any of ``UMER1Embedder.config_keys``, e.g. ``max_new_tokens``)
            and ``SentenceTransformer`` arguments (``model_kwargs``, ``revision``, ``prompts``, ...).

    Returns:
        A SentenceTransformer whose single module is a :class:`~ume_plugins.module.UMER1Embedder`.

    Raises:
        ValueError: The checkpoint is not UME-R1, or a setting is invalid.
        ~ume_plugins.adapters.AdapterMismatchError: An adapter does not match the model.
    """
    settings = {key: kwargs.pop(key) for key in list(kwargs) if key in UMER1Embedder.config_keys}
    if mode is not None:
        settings["mode"] = mode
    resolved = resolve_name(name_or_path, kwargs.get("revision"))
    path = resolved.path if resolved else name_or_path
    if os.path.isdir(path) and not os.path.isfile(os.path.join(path, "modules.json")):
        if not is_ume_r1_checkpoint(path):
            raise ValueError(f"{name_or_path} is not a UME-R1 checkpoint (a Qwen2-VL with <gen_emb> and <disc_emb>)")
    model = SentenceTransformer(name_or_path, device=device, **kwargs)
    module = model[0]
    if not isinstance(module, UMER1Embedder):
        raise ValueError(f"{name_or_path} did not load as a UME-R1 model (first module: {type(module).__name__})")
    for key, value in settings.items():
        setattr(module, key, value)
    module.validate_settings()
    if adapter is not None:
        hub_kwargs = {key: kwargs[key] for key in ("token", "cache_folder", "local_files_only") if key in kwargs}
        module.load_adapters(adapter, **hub_kwargs)
    return model


def is_ume_r1_checkpoint(name_or_path: str, **hub_kwargs: Any) -> bool:
    """True for a Qwen2-VL checkpoint whose tokenizer has ``<gen_emb>`` and ``<disc_emb>``."""
    if name_or_path.lower() in ALIASES:
        return True
    config_path = load_file_path(name_or_path, "config.json", **hub_kwargs)
    if config_path is None:
        return False
    with open(config_path, encoding="utf-8") as file:
        if json.load(file).get("model_type") != "qwen2_vl":
            return False
    for filename in ("tokenizer.json", "tokenizer_config.json", "added_tokens.json"):
        path = load_file_path(name_or_path, filename, **hub_kwargs)
        if path is not None:
            with open(path, encoding="utf-8") as file:
                text = file.read()
            if all(json.dumps(token) in text for token in _REQUIRED_TOKENS):
                return True
    return False


def install() -> None:
    """Install the hooks described in the module docstring (idempotent)."""
    if getattr(SentenceTransformer, "_ume_plugins_hooks", False):
        return
    SentenceTransformer._module_classes = MappingProxyType(
        {**SentenceTransformer._module_classes, MODULE_CLASS_REF: UMER1Embedder}
    )
    SentenceTransformer.__init__ = _resolving_aliases(SentenceTransformer.__init__)
    SentenceTransformer._load_default_modules = _building_ume_modules(SentenceTransformer._load_default_modules)
    SentenceTransformer.encode = _locating_inputs(SentenceTransformer.encode)
    SentenceTransformer.load_adapter = _checking_adapters(SentenceTransformer.load_adapter)
    SentenceTransformer._get_model_config = _stating_requirements(SentenceTransformer._get_model_config)
    SentenceTransformer._ume_plugins_hooks = True


def _resolving_aliases(init):
    @functools.wraps(init)
    def __init__(self, model_name_or_path: str | None = None, *args: Any, **kwargs: Any) -> None:
        if isinstance(model_name_or_path, str):
            resolved = resolve_name(model_name_or_path, kwargs.get("revision"))
            if resolved is not None:
                model_name_or_path = resolved.path
                kwargs["revision"] = resolved.revision
        init(self, model_name_or_path, *args, **kwargs)

    return __init__


def _building_ume_modules(load_default_modules):
    @functools.wraps(load_default_modules)
    def _load_default_modules(
        self,
        model_name_or_path: str,
        token: bool | str | None,
        cache_folder: str | None,
        revision: str | None = None,
        trust_remote_code: bool = False,
        local_files_only: bool = False,
        model_kwargs: dict[str, Any] | None = None,
        processor_kwargs: dict[str, Any] | None = None,
        config_kwargs: dict[str, Any] | None = None,
    ):
        hub_kwargs = {
            "token": token,
            "cache_folder": cache_folder,
            "revision": revision,
            "local_files_only": local_files_only,
        }
        if is_ume_r1_checkpoint(model_name_or_path, **hub_kwargs):
            module = UMER1Embedder.load(
                model_name_or_path, **hub_kwargs, model_kwargs=model_kwargs, processor_kwargs=processor_kwargs
            )
            return [module], {}
        return load_default_modules(
            self,
            model_name_or_path,
            token,
            cache_folder,
            revision=revision,
            trust_remote_code=trust_remote_code,
            local_files_only=local_files_only,
            model_kwargs=model_kwargs,
            processor_kwargs=processor_kwargs,
            config_kwargs=config_kwargs,
        )

    return _load_default_modules


def _locating_inputs(encode):
    @functools.wraps(encode)
    def wrapped_encode(self, inputs: Any, *args: Any, **kwargs: Any) -> Any:
        module = self._first_module() if len(self._modules) else None
        if not isinstance(module, UMER1Embedder):
            return encode(self, inputs, *args, **kwargs)
        if self.is_singular_input(inputs):
            batch = [inputs]
        elif isinstance(inputs, (list, tuple)):
            batch = inputs
        else:
            return encode(self, inputs, *args, **kwargs)
        with located(batch, module.input_policy()):
            return encode(self, inputs, *args, **kwargs)

    return wrapped_encode


def _checking_adapters(load_adapter):
    @functools.wraps(load_adapter)
    def wrapped_load_adapter(self, *args: Any, **kwargs: Any) -> Any:
        module = self._first_module() if len(self._modules) else None
        if isinstance(module, UMER1Embedder):
            return module.load_adapter(*args, **kwargs)
        return load_adapter(self, *args, **kwargs)

    return wrapped_load_adapter


def _stating_requirements(get_model_config):
    @functools.wraps(get_model_config)
    def _get_model_config(self) -> dict[str, Any]:
        config = get_model_config(self)
        module = self._first_module() if len(self._modules) else None
        if isinstance(module, UMER1Embedder):
            config["requirements"] = {**config.get("requirements", {}), **module.requirements()}
        return config

    return _get_model_config
