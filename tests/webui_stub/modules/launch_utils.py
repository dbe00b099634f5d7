"""Stand-in for the WebUI's `modules.launch_utils` (1.10.1): `script_path`, `is_installed` and `run_pip`, whose pip
only records what it is asked (`pip_commands`); `installed` (distribution -> version) is set by the tests."""
from __future__ import annotations

from typing import Dict, List, Optional

from modules.paths import script_path  # the WebUI's folder (the real one imports it from modules.paths_internal)

installed: Dict[str, str] = {}
pip_commands: List[str] = []


def is_installed(package: str) -> bool:
    return package in installed


def run_pip(command: str, desc: Optional[str] = None, live: bool = False) -> str:
    pip_commands.append(command)
    return ""
