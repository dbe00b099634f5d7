"""reForge's own UNet (`ldm_patched`, the old Forge backend's), imported from reForge's source where it is at hand,
for cross-checks against ldm's. Never part of this repository: read at test time from

- HANDREFINER_REFORGE_SRC: a reForge checkout (a folder with `ldm_patched/`) or a bare git repository of it, else
- `../.mirror/Panchovix+stable-diffusion-webui-reForge/repo` beside this repository (a fetched bare repository).

A bare repository is read at REFORGE_COMMIT (the commit ../shared/reforge installs) into a temporary folder.
"""
from __future__ import annotations

import contextlib
import io
import os
import subprocess
import sys
from pathlib import Path
from typing import Iterator, Optional

ROOT = Path(__file__).resolve().parents[1]
REFORGE_COMMIT = "3b56b268ad9158ee8b30900973b6ccda4ec22241"
DEFAULT_MIRROR = ROOT.parent / ".mirror" / "Panchovix+stable-diffusion-webui-reForge" / "repo"
# What the UNet's module imports (ldm_patched's attention reaches modules_forge.stream), less text_encoders/, which
# holds a file that fetched snapshots lack (git archive stops at it) and which the UNet does not need.
PATHS = ["ldm_patched", "modules_forge/__init__.py", "modules_forge/stream.py"]
SKIPPED = "ldm_patched/modules/text_encoders/"


def source() -> Optional[Path]:
    given = os.environ.get("HANDREFINER_REFORGE_SRC")
    path = Path(given) if given else DEFAULT_MIRROR
    return path if path.exists() else None


def _is_bare_git(path: Path) -> bool:
    return (path / "HEAD").is_file() and (path / "objects").is_dir()


def checkout(src: Path, into: Path) -> Path:
    """A folder holding `ldm_patched/` (and `modules_forge/`): `src` itself, or its commit written into `into`."""
    if not _is_bare_git(src):
        if not (src / "ldm_patched").is_dir():
            raise FileNotFoundError(f"{src} has no ldm_patched/: set HANDREFINER_REFORGE_SRC to a reForge checkout")
        return src
    git = ["git", "-C", str(src)]
    listed = subprocess.run([*git, "ls-tree", "-r", "--name-only", REFORGE_COMMIT, "--", *PATHS],
                            capture_output=True, text=True, check=True).stdout.splitlines()
    files = [name for name in listed if not name.startswith(SKIPPED)]
    archive = subprocess.run([*git, "archive", REFORGE_COMMIT, "--", *files], capture_output=True, check=True).stdout
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)
    return into


@contextlib.contextmanager
def reforge_openaimodel(folder: Path) -> Iterator[object]:
    """reForge's `ldm_patched.ldm.modules.diffusionmodules.openaimodel`, on the CPU (as --always-cpu), imported
    from `folder`; on exit it and everything imported with it are gone from sys.modules."""
    sys.path.insert(0, str(folder))
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            import ldm_patched.modules.args_parser as args_parser

            args_parser.args.always_cpu = True   # its device probe would ask CUDA at import
            from ldm_patched.ldm.modules.diffusionmodules import openaimodel
        yield openaimodel
    finally:
        sys.path.remove(str(folder))
        for name in [n for n in sys.modules if n.split(".")[0] in ("ldm_patched", "modules_forge")]:
            del sys.modules[name]
