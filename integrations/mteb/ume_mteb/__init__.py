"""UME-R1 for MTEB and MMEB-V2: both embedding modes, task instructions, local tasks.

::

    import mteb
    import ume_mteb

    model = ume_mteb.load_model("ume-r1", mode="discriminative")
    results = mteb.evaluate(model, mteb.get_tasks(tasks=["MSVDT2VRetrieval"]))
"""

from __future__ import annotations

from ume_mteb.encoder import UMER1Encoder, load_model
from ume_mteb.model_meta import UME_R1_2B_META, UME_R1_7B_META, register

__version__ = "0.1.0"

__all__ = ["UME_R1_2B_META", "UME_R1_7B_META", "UMER1Encoder", "load_model", "register"]
