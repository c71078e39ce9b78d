"""UME-R1 for MTEB and MMEB-V2: both embedding modes, task instructions, local tasks.

::

    import mteb
    import ume_mteb

    model = ume_mteb.load_model("ume-r1", mode="discriminative")
    results = mteb.evaluate(model, mteb.get_tasks(tasks=["MSVDT2VRetrieval"]))
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ume_mteb.encoder import UMER1Encoder, load_model
    from ume_mteb.model_meta import UME_R1_2B_META, UME_R1_7B_META, register

__version__ = "0.1.0"

__all__ = ["UME_R1_2B_META", "UME_R1_7B_META", "UMER1Encoder", "load_model", "register"]

# Public names load their module (and so mteb and torch) on first use: `ume-mteb --help` stays light.
_HOMES = {
    "UMER1Encoder": "ume_mteb.encoder",
    "load_model": "ume_mteb.encoder",
    "UME_R1_2B_META": "ume_mteb.model_meta",
    "UME_R1_7B_META": "ume_mteb.model_meta",
    "register": "ume_mteb.model_meta",
}


def __getattr__(name: str) -> Any:
    """Import a public name from its home module (PEP 562)."""
    if name not in _HOMES:
        raise AttributeError(f"module 'ume_mteb' has no attribute {name!r}")
    return getattr(importlib.import_module(_HOMES[name]), name)
