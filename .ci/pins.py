"""What the .ci scripts read from requirements/lock.in: the torch build every venv keeps."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# The distributions this repository builds itself (the package and its integrations).
LOCAL = {"ume-plugins", "langchain-ume", "llama-index-embeddings-ume", "ume-mteb"}


def torch_pins() -> dict[str, str]:
    """The versions requirements/lock.in pins for torch and torchvision, by name.

    They are the builds this project's machines serve from local disk, so every venv keeps them.
    """
    text = (ROOT / "requirements" / "lock.in").read_text(encoding="utf-8")
    return dict(re.findall(r"^(torch|torchvision)==(\S+)\s*$", text, flags=re.MULTILINE))


def normalised(name: str) -> str:
    """A distribution name as PEP 503 compares them."""
    return re.sub(r"[-_.]+", "-", name).lower()
