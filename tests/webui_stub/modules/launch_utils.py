"""What extension installers call: is_installed and run_pip. This pip installs nothing: it records the command in
`pip_commands`; `installed` (distribution -> version) is what the tests say is installed."""
from __future__ import annotations

from modules.paths import script_path  # noqa: F401  (the WebUI has it here too; install.py reads it)

installed = {}
pip_commands = []


def is_installed(package):
    return package in installed


def run_pip(command, desc=None, live=False):
    pip_commands.append(command)
    return ""
