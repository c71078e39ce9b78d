"""The adapter methods of the UME-R1 module, and ``adapter=`` for a single encode call."""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from ume_plugins.adapters import layers
from ume_plugins.adapters.source import PEFT_INSTALL
from ume_plugins.adapters.store import ADAPTERS_KEY, adapter_record, load_adapter
from ume_plugins.checkpoints import HubOptions

if TYPE_CHECKING:
    from transformers import PreTrainedModel

REQUIREMENTS: dict[str, dict[str, str]] = {
    "transformers": {"specifier": ">=5.16", "reason": "UME-R1 modules use the transformers 5 Qwen2-VL layout."},
}
ADAPTER_REQUIREMENTS: dict[str, dict[str, str]] = {
    "peft": {"specifier": ">=0.20", "reason": f"The model carries LoRA adapters: {PEFT_INSTALL}"},
}


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
    names = layers.loaded(model, adapter, f"run adapter={adapter!r}")
    previous = layers.AdapterState.of(model)
    layers.activate(model, names, enabled=True)
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


class AdapterMixin:
    """LoRA/DoRA adapter methods of a sentence-transformers module holding a Qwen2-VL model as ``self.model``.

    These are the supported adapter API: call them on the module (``model[0].set_adapter(...)``).
    ``SentenceTransformer.load_adapter``, ``set_adapter`` and the like forward to transformers' own
    peft integration instead, which refuses some peft releases and only logs mismatched keys. The
    adapters' state is saved with the module's settings (key ``"adapters"``) and their weights under
    ``adapters/<name>/``.
    """

    model: PreTrainedModel

    @property
    def adapter_names(self) -> list[str]:
        """Names of the loaded adapters, in load order."""
        return layers.adapter_names(self.model)

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
        :func:`ume_plugins.adapters.load_adapter` for the arguments and errors.

        Returns:
            The adapter's name.
        """
        hub = HubOptions(revision, token, cache_folder, local_files_only)
        return load_adapter(self.model, peft_model_id, adapter_name, subfolder=subfolder, hub=hub)

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
        layers.activate(self.model, names[:1], enabled=True)
        return names

    def set_adapter(self, adapter_name: str | Sequence[str]) -> None:
        """Make these adapter(s) the active ones (several run combined); enabled or not stays as it was.

        Raises:
            ValueError: No adapter is loaded, or an unknown name.
        """
        names = layers.loaded(self.model, adapter_name, "set an adapter")
        layers.AdapterState.of(self.model).restore(self.model, active=names)

    def active_adapters(self) -> list[str]:
        """Names of the adapters that run when adapters are enabled (empty without adapters)."""
        return layers.active_adapters(self.model)

    def disable_adapters(self) -> None:
        """Run the base model until :meth:`enable_adapters`; per-call ``adapter=`` still works."""
        self._set_enabled(False)

    def enable_adapters(self) -> None:
        """Run the active adapters again after :meth:`disable_adapters`."""
        self._set_enabled(True)

    def delete_adapter(self, adapter_name: str | Sequence[str]) -> None:
        """Remove adapter(s); with none left the model is its plain base again.

        When an active adapter is deleted, the other active ones stay, else the first loaded one
        becomes active.

        Raises:
            ValueError: No adapter is loaded, or an unknown name.
        """
        layers.delete(self.model, adapter_name)

    def merge_and_unload(self, adapter_name: str | Sequence[str] | None = None) -> list[str]:
        """Fold an adapter into the base weights (faster encoding) and remove all adapter layers.

        Args:
            adapter_name: The adapter(s) to merge; default the active one(s). Others are dropped.

        Returns:
            The merged adapters' names.
        """
        return layers.merge_and_unload(self.model, adapter_name)

    def requirements(self) -> dict[str, dict[str, str]]:
        """Package requirements of this model as saved (``config_sentence_transformers.json``)."""
        if self.adapter_names:
            return {**REQUIREMENTS, **ADAPTER_REQUIREMENTS}
        return dict(REQUIREMENTS)

    def get_config_dict(self) -> dict[str, Any]:
        """The module's settings, plus the adapters' record when adapters are loaded."""
        config = super().get_config_dict()
        record = adapter_record(self.model)
        if record is not None:
            config[ADAPTERS_KEY] = record
        return config

    def _set_enabled(self, enabled: bool) -> None:
        layers.loaded(self.model, self.adapter_names, "enable adapters" if enabled else "disable adapters")
        state = layers.AdapterState.of(self.model)
        layers.activate(self.model, state.active, enabled=enabled, trainable=state.trainable)
