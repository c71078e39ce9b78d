"""The embedding modes ume-mteb runs: the core's modes that give one vector per input.

``"both"`` adds a second vector, which mteb has no use for. Light on purpose (no torch, no mteb):
``ume-mteb --help`` imports it.
"""

from __future__ import annotations

from ume_plugins.settings import DEFAULT_SETTINGS
from ume_plugins.settings import MODES as CORE_MODES

MODES = tuple(mode for mode in CORE_MODES if mode != "both")
# The core's default: the mode of every reported UME-R1 score.
DEFAULT_MODE = DEFAULT_SETTINGS.mode
