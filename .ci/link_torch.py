"""Hard-link the locked venv's torch build into a fresh venv, so the two share its ~5 GB on disk.

    python .ci/link_torch.py SOURCE_VENV TARGET_VENV

Every venv of this project pins the same torch and torchvision (requirements/lock.in), and torch
pins its CUDA libraries and triton exactly, so these files are byte-identical in every venv. CI
builds three venvs on one disk; linking keeps the second and third at ~2 GB instead of ~7 GB.
pip then finds these distributions installed and leaves them, or replaces them if a resolution
wants another version (removing a link never touches the source venv's file).

Nothing is linked (and pip installs as usual) when the source venv is missing, holds another torch
version, or lies on another filesystem.
"""

import os
import re
import sys
import sysconfig
from importlib.metadata import Distribution, distributions
from pathlib import Path

from pins import normalised, torch_pins

# torch, torchvision, and the packages torch pins to its own build: CUDA libraries and triton.
SHARED = re.compile(r"^(torch|torchvision|triton|nvidia-.*|cuda-toolkit)$")


def site_packages(venv: Path) -> Path:
    """The purelib folder of ``venv`` (same Python version as the one running this script)."""
    return Path(sysconfig.get_path("purelib", vars={"base": str(venv), "platbase": str(venv)}))


def shared_distributions(source: Path) -> list[Distribution]:
    """The source's distributions to share, or none if its torch is not the pinned build."""
    found = {normalised(d.metadata["Name"]): d for d in distributions(path=[str(source)])}
    pins = torch_pins()
    if any(found.get(name) is None or found[name].version != version for name, version in pins.items()):
        return []
    return [d for name, d in found.items() if SHARED.match(name)]


def installed_files(distribution: Distribution, source: Path) -> list[Path]:
    """The files ``distribution`` installed inside ``source`` (scripts in bin/ are left out)."""
    files = []
    for record in distribution.files or []:
        path = (source / record).resolve()
        if path.is_relative_to(source) and path.is_file():
            files.append(path.relative_to(source))
    return files


def link(source: Path, target: Path) -> int:
    """Link every shared file from ``source`` into ``target``; return how many distributions.

    A distribution that cannot be linked whole is removed again, so pip never sees half of one.
    """
    shared = shared_distributions(source)
    for count, distribution in enumerate(shared):
        linked: list[Path] = []
        try:
            for relative in installed_files(distribution, source):
                destination = target / relative
                if not destination.exists():
                    destination.parent.mkdir(parents=True, exist_ok=True)
                    os.link(source / relative, destination)
                    linked.append(destination)
        except OSError as error:
            for destination in linked:
                destination.unlink()
            print(f"link_torch: stopped at {distribution.metadata['Name']}: {error}")
            return count
    return len(shared)


def main() -> int:
    """Link from the first venv argument into the second."""
    source_venv, target_venv = (Path(arg).resolve() for arg in sys.argv[1:3])
    source, target = site_packages(source_venv), site_packages(target_venv)
    if not source.is_dir() or source.stat().st_dev != target.stat().st_dev:
        print(f"link_torch: nothing linked ({source_venv.name} missing or on another filesystem)")
        return 0
    count = link(source, target)
    print(f"link_torch: {count} distributions linked from {source_venv.name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
