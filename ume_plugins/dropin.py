"""Drop-in loading: ``SentenceTransformer("ume-r1")`` returns a UME-R1 model after ``import ume_plugins``.

sentence-transformers has no plugin registry, so one member of the host is patched:
``SentenceTransformer.__new__``. For an alias, a saved UME-R1 folder, a raw UME-R1 checkpoint or a
list of modules holding ours, it creates a :class:`~ume_plugins.model.UMESentenceTransformer`
(a plain subclass, which then loads through its own ``__init__``); for every other model it does
exactly what the host does. Recognising a hub id costs a lookup of its ``modules.json`` (and, when
it has none, of its ``config.json``), files the host fetches next anyway; bare names that are not
ours are never looked up.

The patch is installed as soon as sentence-transformers is imported: at once if it already is,
else by a one-shot import hook, so that ``import ume_plugins`` alone stays light (no torch).
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import sys
from typing import Any

from ume_plugins.checkpoints import MODULE_CLASS_REF, HubOptions, is_ume_r1_model

_HOST = "sentence_transformers"
_MARK = "_ume_plugins_route"


def install_when_imported() -> None:
    """Install the patch now if sentence-transformers is imported, else right after it is (idempotent)."""
    if _HOST in sys.modules and hasattr(sys.modules[_HOST], "SentenceTransformer"):
        install()
    elif not any(isinstance(finder, _InstallAfterImport) for finder in sys.meta_path):
        sys.meta_path.insert(0, _InstallAfterImport())


def install() -> None:
    """Patch ``SentenceTransformer.__new__`` to route UME-R1 names to our subclass (idempotent)."""
    from sentence_transformers import SentenceTransformer

    if getattr(SentenceTransformer.__new__, _MARK, False):
        return
    # None: the host creates instances with object.__new__ (checked by a contract test).
    host_new = SentenceTransformer.__dict__.get("__new__")

    def __new__(cls: type, *args: Any, **kwargs: Any) -> Any:
        if cls is SentenceTransformer and _names_ume_model(args, kwargs):
            from ume_plugins.model import UMESentenceTransformer

            cls = UMESentenceTransformer
        if host_new is not None:
            return host_new.__func__(cls, *args, **kwargs)
        return object.__new__(cls)

    setattr(__new__, _MARK, True)
    SentenceTransformer.__new__ = staticmethod(__new__)


def _names_ume_model(args: tuple[Any, ...], kwargs: dict[str, Any]) -> bool:
    modules = kwargs.get("modules")
    if modules is not None:
        classes = modules.values() if isinstance(modules, dict) else modules
        return any(f"{type(module).__module__}.{type(module).__qualname__}" == MODULE_CLASS_REF for module in classes)
    name = args[0] if args else kwargs.get("model_name_or_path")
    if not isinstance(name, str):
        return False
    hub = HubOptions(
        kwargs.get("revision"), kwargs.get("token"), kwargs.get("cache_folder"), kwargs.get("local_files_only", False)
    )
    try:
        return is_ume_r1_model(name, hub)
    except Exception:  # a name the hub cannot serve: the host reports it in its own words
        return False


class _InstallAfterImport(importlib.abc.MetaPathFinder):
    """Finds sentence-transformers with the other finders and installs the patch once its package ran.

    It stays in ``sys.meta_path`` until then: a mere ``importlib.util.find_spec`` (availability
    checks of other libraries) runs no package and must not use it up.
    """

    def find_spec(self, fullname: str, path: Any, target: Any = None) -> importlib.machinery.ModuleSpec | None:
        if fullname != _HOST:
            return None
        finders = (finder for finder in sys.meta_path if finder is not self and hasattr(finder, "find_spec"))
        spec = next((spec for finder in finders if (spec := finder.find_spec(fullname, path, target))), None)
        if spec is None or spec.loader is None or not hasattr(spec.loader, "exec_module"):
            return spec
        run_package = spec.loader.exec_module

        def exec_module(module: Any) -> None:
            run_package(module)
            if self in sys.meta_path:
                sys.meta_path.remove(self)
            install()

        spec.loader.exec_module = exec_module
        return spec
