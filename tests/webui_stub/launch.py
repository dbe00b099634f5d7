"""Stand-in for the WebUI's `launch` module (launch_utils.is_installed / run_pip), recording pip commands."""
from __future__ import annotations

from typing import Dict, List, Optional

installed: Dict[str, str] = {}       # distribution name -> version, set by the tests
pip_commands: List[str] = []


def is_installed(package: str) -> bool:
    return package in installed


def run_pip(command: str, desc: Optional[str] = None, live: bool = False) -> str:
    pip_commands.append(command)
    return ""
