"""Installs what HandRefiner needs into the WebUI's Python. The WebUI runs this file at start-up, with its
`launch` module importable; it returns at once, printing nothing, when everything is there.

Nothing the WebUI has installed changes: every `==` pin of the WebUI's requirements file (the file its launcher
reads: $REQS_FILE, default requirements_versions.txt, relative to the working directory or the WebUI's folder)
whose distribution is installed is held at its installed version by a pip constraints file, and so are numpy,
pydantic and protobuf (pydantic 2 or numpy 2 would break the WebUI's FastAPI 0.94 and its extensions).

Only what HandRefiner imports is installed:
- mediapipe without its declared dependencies (`--no-deps`): its hand graph needs numpy, protobuf, absl-py, attrs,
  flatbuffers, matplotlib and any one OpenCV distribution (measured with 0.10.11 and 0.10.21). Its declared
  opencv-contrib-python would put a second distribution into the `cv2` folder beside the WebUI's opencv-python
  (upgrading or removing either later breaks the other), jax/jaxlib (358 MB) and sounddevice serve other graphs.
  Since pip does not see its declared protobuf then, the release is chosen here by the installed protobuf, which
  the WebUI pins (3.20.0) and puts back on every start.
- open3d without its declared dependencies: `import open3d` and its RaycastingScene need numpy and, through the
  package's eager import of its plotly viewer, dash (with plotly and Flask); not ipywidgets, ipython, nbformat or
  the jupyter tree, whose ipython 9 would replace the WebUI's psutil 5.9.5. dash is held below 3 (dash 3 needs
  pydantic 2).
`pip check` then names the declared dependencies left out; README.md lists them.
"""
from __future__ import annotations

import importlib.metadata
import os
import platform
import re
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

VersionOf = Callable[[str], Optional[str]]
RequiresOf = Callable[[str], Optional[List[str]]]
HELD_BACK = ("numpy", "pydantic", "protobuf")   # never changed by HandRefiner's installs, pinned by the WebUI or not
# When a held package is absent, its constraint (None: none).
HELD_BACK_IF_ABSENT = {"numpy": "numpy<2", "pydantic": "pydantic<2", "protobuf": None}
# The distributions that provide `cv2`; MediaPipe works with any one of them.
OPENCV = ("opencv-python", "opencv-python-headless", "opencv-contrib-python", "opencv-contrib-python-headless")
# MediaPipe's releases with the legacy solutions.hands graph, by the protobuf their wheels declare:
# (lowest protobuf, protobuf below which, pip specifier). 0.10.12 was never released.
MEDIAPIPE_FOR_PROTOBUF = (((3, 11), (4,), "mediapipe>=0.10.9,<=0.10.11"),
                          ((4, 25, 3), (5,), "mediapipe>=0.10.13,<=0.10.21"))
MEDIAPIPE_RANGE = ((0, 10, 9), (0, 10, 21))             # the releases above, lowest and highest
PROTOBUF_FOR_NEW_MEDIAPIPE = "protobuf>=4.25.3,<5"   # installed with mediapipe when no protobuf is there


@dataclass(frozen=True)
class Requirement:
    distributions: Tuple[str, ...]          # any of these, installed in a version in [minimum, maximum], will do
    minimum: Tuple[int, ...]
    maximum: Optional[Tuple[int, ...]]
    install: Optional[str]                  # the pip specifier installed when none will do (None: none fits)
    no_deps: bool = False                   # installed without its declared dependencies


def requirements(protobuf: Optional[str], system: str = sys.platform,
                 machine: str = platform.machine()) -> List[Requirement]:
    """What HandRefiner imports, with what those imports really need, in install order. `protobuf`: the installed
    version, which chooses mediapipe's release (none fits: nothing to install, see install)."""
    # open3d-cpu (no CUDA libraries, a much smaller wheel) exists for Linux x86_64 only.
    open3d = "open3d-cpu==0.20.0" if system.startswith("linux") and machine.lower() in ("x86_64", "amd64") \
        else "open3d==0.20.0"
    return [
        # MediaPipe's hand graph: these, numpy and protobuf (held), and one OpenCV (the WebUI's when it has one).
        Requirement(OPENCV, (4,), None, "opencv-python"),
        Requirement(("absl-py",), (0,), None, "absl-py"),
        Requirement(("attrs",), (19, 1), None, "attrs>=19.1.0"),
        Requirement(("flatbuffers",), (2, 0), None, "flatbuffers>=2.0"),
        Requirement(("matplotlib",), (0,), None, "matplotlib"),
        Requirement(("mediapipe",), *MEDIAPIPE_RANGE, mediapipe_specifier(protobuf), no_deps=True),
        # `import open3d` imports its plotly viewer, which imports dash (plotly and Flask come with it).
        Requirement(("dash",), (2, 6), (2, 99), "dash>=2.6,<3"),
        # Depth rendering uses open3d.t RaycastingScene.
        Requirement(("open3d", "open3d-cpu"), (0, 17), None, open3d, no_deps=True),
    ]


def mediapipe_specifier(protobuf: Optional[str]) -> Optional[str]:
    """The mediapipe releases built for this protobuf (None: no release with the hand graph fits it). Without a
    protobuf, the newest ones (protobuf comes with them)."""
    if protobuf is None:
        return MEDIAPIPE_FOR_PROTOBUF[-1][2]
    found = version_tuple(protobuf)
    return next((spec for low, below, spec in MEDIAPIPE_FOR_PROTOBUF if low <= found < below), None)


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
        from packaging.requirements import InvalidRequirement
        from packaging.requirements import Requirement as Declared
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


# ---- the WebUI's pins -------------------------------------------------------------------------------------

_PIN = re.compile(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)\s*==\s*([^\s;#]+)")


def webui_requirements_file(webui_dir: Optional[str], environ: Dict[str, str] = os.environ) -> Optional[Path]:
    """The requirements file the WebUI's launcher installs (prepare_environment): $REQS_FILE or
    requirements_versions.txt, as given (relative to the working directory) or else in the WebUI's folder."""
    name = environ.get("REQS_FILE", "requirements_versions.txt")
    for candidate in (Path(name), Path(webui_dir or ".") / name):
        if candidate.is_file():
            return candidate
    return None


def pinned(requirements_text: str) -> List[str]:
    """The distribution names the file pins with `==` (comments and unpinned lines skipped)."""
    names = []
    for line in requirements_text.splitlines():
        match = _PIN.match(line.split("#", 1)[0])
        if match:
            names.append(match.group(1))
    return names


def constraints(version_of: VersionOf, webui_pins: Sequence[str] = ()) -> str:
    """A pip constraints file: every WebUI pin that is installed, and the held packages, at their installed
    versions (numpy<2 / pydantic<2 where those are absent)."""
    lines, seen = [], set()
    for name in list(webui_pins) + list(HELD_BACK):
        key = name.lower().replace("_", "-")
        if key in seen:
            continue
        seen.add(key)
        version = version_of(name)
        line = f"{name}=={version}" if version else HELD_BACK_IF_ABSENT.get(key)
        if line:
            lines.append(line)
    return "\n".join(lines) + "\n"


# ---- installing -------------------------------------------------------------------------------------------

def install(launch, version_of: VersionOf = installed_version, system: str = sys.platform,
            machine: str = platform.machine(), requires_of: RequiresOf = installed_requires,
            environ: Dict[str, str] = os.environ) -> List[str]:
    """Runs `pip install` (through the WebUI's launch.run_pip) for what is missing: one command for the packages
    installed with their dependencies, one for those without; returns the commands."""
    protobuf = version_of("protobuf")
    missing = [r for r in requirements(protobuf, system, machine)
               if not satisfied(r, launch.is_installed, version_of, requires_of)]
    if any(r.install is None for r in missing):
        print(f"HandRefiner: no MediaPipe release with the hand tracker runs with protobuf {protobuf} (0.10.9-0.10.11 "
              "need protobuf 3.x, 0.10.13-0.10.21 protobuf 4.25.3 up to 5); hand detection will not work until one "
              "of them is installed with a protobuf it fits")
        missing = [r for r in missing if r.install is not None]
    if not missing:
        return []
    with_deps = [r.install for r in missing if not r.no_deps]
    if protobuf is None and any(r.distributions == ("mediapipe",) for r in missing):
        with_deps.append(PROTOBUF_FOR_NEW_MEDIAPIPE)
    without_deps = [r.install for r in missing if r.no_deps]
    webui_dir = getattr(getattr(launch, "launch_utils", None), "script_path", None)
    requirements_file = webui_requirements_file(webui_dir, environ)
    webui_pins = pinned(requirements_file.read_text(encoding="utf-8")) if requirements_file else []
    handle, path = tempfile.mkstemp(prefix="handrefiner-constraints-", suffix=".txt")
    commands = []
    try:
        with os.fdopen(handle, "w") as f:
            f.write(constraints(version_of, webui_pins))
        for specifiers, flags in ((with_deps, ""), (without_deps, "--no-deps ")):
            if not specifiers:
                continue
            quoted = " ".join(f'"{s}"' for s in specifiers)
            command = f'install {flags}{quoted} -c "{path}"'
            launch.run_pip(command, f"{', '.join(specifiers)} for HandRefiner")
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
