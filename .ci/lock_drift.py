"""Say how a venv's installed versions differ from requirements/lock.txt; exit 1 if they differ.

    python .ci/lock_drift.py VENV

.ci/compat runs it on the newest edge before that edge's suite: the lines it prints name the
packages that moved since the lock, which is what a red newest edge is about.
"""

import re
import sys
from importlib.metadata import distributions
from pathlib import Path

from link_torch import site_packages
from pins import LOCAL, ROOT, normalised

# Every venv starts with pip; the lock lists only what the project needs.
IGNORED = LOCAL | {"pip"}


def locked_versions() -> dict[str, str]:
    """The lock's pinned version of every package, by normalised name."""
    text = (ROOT / "requirements" / "lock.txt").read_text(encoding="utf-8")
    pins = re.findall(r"^([A-Za-z0-9_.-]+)(?:\[[^\]]*\])?==(\S+)", text, flags=re.MULTILINE)
    return {normalised(name): version for name, version in pins}


def installed_versions(venv: Path) -> dict[str, str]:
    """Each distribution installed in ``venv``, by normalised name."""
    found = distributions(path=[str(site_packages(venv.resolve()))])
    return {normalised(d.metadata["Name"]): d.version for d in found}


def drift(locked: dict[str, str], installed: dict[str, str]) -> list[str]:
    """One line per package whose installed version is not the lock's (missing or extra included)."""
    lines = []
    for name in sorted((locked.keys() | installed.keys()) - IGNORED):
        have, pinned = installed.get(name), locked.get(name)
        if have != pinned:
            lines.append(f"{name}: {have or 'not installed'} (lock: {pinned or 'not listed'})")
    return lines


def main() -> int:
    """Print the drift of the venv named by the first argument; 0 when there is none."""
    lines = drift(locked_versions(), installed_versions(Path(sys.argv[1])))
    verdict = "differs from requirements/lock.txt:" if lines else "matches requirements/lock.txt"
    print(f"{sys.argv[1]} {verdict}")
    for line in lines:
        print(f"  {line}")
    return 1 if lines else 0


if __name__ == "__main__":
    sys.exit(main())
