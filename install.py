"""Installs what HandRefiner needs into the WebUI's Python. The WebUI runs this file at start-up, with its
`launch` module importable; it returns at once, printing nothing, when everything is there.

Versions are chosen to live beside the WebUI 1.9/1.10: numpy, pydantic and protobuf stay exactly as installed (a
pip constraint), so mediapipe's and open3d's dependencies cannot pull numpy 2 or pydantic 2 (which breaks the
WebUI's FastAPI 0.94); open3d's dash dependency is held below 3 for the same reason. protobuf is held because the
WebUI pins protobuf==3.20.0 and puts it back on every start when it differs: pip then picks the newest mediapipe
that runs with the WebUI's protobuf (0.10.11; 0.10.13 and later need protobuf 4), and an installed mediapipe whose
declared protobuf no longer matches is replaced.
"""
from __future__ import annotations

import importlib.metadata
import os
import platform
import re
import sys
import tempfile
from dataclasses import dataclass
from typing import Callable, List, Optional, Sequence, Tuple

VersionOf = Callable[[str], Optional[str]]
RequiresOf = Callable[[str], Optional[List[str]]]
HELD_BACK = ("numpy", "pydantic", "protobuf")   # never changed by HandRefiner's installs
# When a held package is absent, its constraint (None: none).
HELD_BACK_IF_ABSENT = {"numpy": "numpy<2", "pydantic": "pydantic<2", "protobuf": None}


@dataclass(frozen=True)
class Requirement:
    distributions: Tuple[str, ...]          # any of these, installed in a version in [minimum, maximum], will do
    minimum: Tuple[int, ...]
    maximum: Optional[Tuple[int, ...]]
    install: Tuple[str, ...]                # pip requirement specifiers installed when it will not


def requirements(system: str = sys.platform, machine: str = platform.machine()) -> List[Requirement]:
    # open3d-cpu (no CUDA libraries, a much smaller wheel) exists for Linux x86_64 only.
    open3d = "open3d-cpu==0.20.0" if system.startswith("linux") and machine.lower() in ("x86_64", "amd64") \
        else "open3d==0.20.0"
    return [
        # The hand tracker is MediaPipe's solutions.hands graph, present up to 0.10.21; pip picks the newest
        # release that fits the held protobuf.
        Requirement(("mediapipe",), (0, 10, 9), (0, 10, 21), ("mediapipe>=0.10.9,<=0.10.21",)),
        # Depth rendering uses open3d.t RaycastingScene.
        Requirement(("open3d", "open3d-cpu"), (0, 17), None, (open3d, "dash<3")),
    ]


def installed_version(distribution: str) -> Optional[str]:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


def version_tuple(version: str) -> Tuple[int, ...]:
    parts = []
    for piece in version.split("+")[0].split("."):
        digits = re.match(r"\d+", piece)
        if digits is None:
            break
        parts.append(int(digits.group()))
        if digits.end() < len(piece):  # "0rc1": a pre-release of 0; nothing after it counts
            break
    return tuple(parts)


def installed_requires(distribution: str) -> Optional[List[str]]:
    try:
        return importlib.metadata.requires(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


def held_back_conflicts(distribution: str, version_of: VersionOf, requires_of: RequiresOf) -> List[str]:
    """The held packages whose installed version `distribution`'s declared requirements reject, e.g.
    ["protobuf 3.20.0 (mediapipe needs protobuf<5,>=4.25.3)"]: it would fail at run time, and HandRefiner's
    installs may not change them."""
    try:
        from packaging.requirements import InvalidRequirement, Requirement as Declared
    except ImportError:  # the WebUI has packaging; without it nothing can be checked
        return []
    conflicts = []
    for line in requires_of(distribution) or []:
        try:
            declared = Declared(line)
        except InvalidRequirement:
            continue
        name = declared.name.lower().replace("_", "-")
        if name not in HELD_BACK or (declared.marker is not None and not declared.marker.evaluate({"extra": ""})):
            continue
        version = version_of(name)
        if version is not None and not declared.specifier.contains(version, prereleases=True):
            conflicts.append(f"{name} {version} ({distribution} needs {name}{declared.specifier})")
    return conflicts


def satisfied(requirement: Requirement, is_installed: Callable[[str], bool], version_of: VersionOf,
              requires_of: RequiresOf = installed_requires) -> bool:
    for name in requirement.distributions:
        version = version_of(name) if is_installed(name) else None
        if version is None:
            continue
        found = version_tuple(version)
        if found >= requirement.minimum and (requirement.maximum is None or found <= requirement.maximum) \
                and not held_back_conflicts(name, version_of, requires_of):
            return True
    return False


def install_specifiers(requirement: Requirement, version_of: VersionOf) -> List[str]:
    """The requirement's pip specifiers; an installed version that is in range but unusable is excluded, so that
    pip replaces it instead of keeping it."""
    specifiers = list(requirement.install)
    installed = version_of(requirement.distributions[0])
    if installed is not None and requirement.install[0].startswith(requirement.distributions[0] + ">"):
        specifiers[0] += f",!={installed}"
    return specifiers


def constraints(version_of: VersionOf) -> str:
    lines = []
    for name in HELD_BACK:
        version = version_of(name)
        line = f"{name}=={version}" if version else HELD_BACK_IF_ABSENT[name]
        if line:
            lines.append(line)
    return "\n".join(lines) + "\n"


def install(launch, version_of: VersionOf = installed_version, system: str = sys.platform,
            machine: str = platform.machine(), requires_of: RequiresOf = installed_requires) -> List[str]:
    """Runs `pip install` (through the WebUI's launch.run_pip) for each missing requirement; returns the commands."""
    missing = [r for r in requirements(system, machine)
               if not satisfied(r, launch.is_installed, version_of, requires_of)]
    if not missing:
        return []
    handle, path = tempfile.mkstemp(prefix="handrefiner-constraints-", suffix=".txt")
    commands = []
    try:
        with os.fdopen(handle, "w") as f:
            f.write(constraints(version_of))
        for requirement in missing:
            specifiers = " ".join(f'"{s}"' for s in install_specifiers(requirement, version_of))
            command = f'install {specifiers} -c "{path}"'
            launch.run_pip(command, f"{requirement.install[0]} for HandRefiner")
            commands.append(command)
    finally:
        os.remove(path)
    return commands


def main(argv: Sequence[str] = ()) -> int:
    import launch

    install(launch)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
