"""The generative and discriminative engine: everything between model features and hidden states.

The module owns one :class:`Engine`, built from an :class:`EngineSpec`; see
:mod:`ume_plugins.engine.engine` for which decoder runs a call.
"""

from __future__ import annotations

from ume_plugins.engine.base import GenEmbMissingError, OnMissing, Rollout, forced_warning
from ume_plugins.engine.engine import BACKENDS, Backend, Engine, EngineSpec
from ume_plugins.engine.slot_state import COMPILE_MODES

__all__ = [
    "BACKENDS",
    "COMPILE_MODES",
    "Backend",
    "Engine",
    "EngineSpec",
    "GenEmbMissingError",
    "OnMissing",
    "Rollout",
    "forced_warning",
]
