"""Print pip constraints pinning every direct dependency to the lowest version its range allows.

Reads the ``>=`` lower bound of each requirement in the project's and the integrations'
pyproject.toml (runtime dependencies and the extras CI installs). torch and torchvision keep the
pins of requirements/lock.in: they are the builds this project's machines serve locally.
"""

import re
import sys

import tomllib
from pins import LOCAL, ROOT, normalised, torch_pins

EXTRAS = {"test", "video", "peft", "ray"}
REQUIREMENT = re.compile(r"^\s*([A-Za-z0-9_.-]+)\s*(?:\[[^\]]*\])?\s*(.*)$")


def lower_bounds() -> dict[str, str]:
    """Each direct dependency's lowest allowed version, by normalised name."""
    bounds: dict[str, str] = {}
    for pyproject in [ROOT / "pyproject.toml", *sorted(ROOT.glob("integrations/*/pyproject.toml"))]:
        project = tomllib.loads(pyproject.read_text(encoding="utf-8"))["project"]
        requirements = list(project.get("dependencies", []))
        for extra, items in project.get("optional-dependencies", {}).items():
            if extra in EXTRAS:
                requirements += items
        for requirement in requirements:
            name, specifier = REQUIREMENT.match(requirement).groups()
            name = normalised(name)
            lower = re.search(r">=\s*([^,;\s]+)", specifier)
            if name in LOCAL or lower is None:
                continue
            if name in bounds and bounds[name] != lower.group(1):
                sys.exit(f"{name} has two lower bounds: {bounds[name]} and {lower.group(1)}")
            bounds[name] = lower.group(1)
    bounds.update(torch_pins())
    return bounds


if __name__ == "__main__":
    for name, version in sorted(lower_bounds().items()):
        print(f"{name}=={version}")
