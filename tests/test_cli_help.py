"""Every command's --help explains every option, and every flag the README names exists."""
from __future__ import annotations

import argparse
import importlib
import re
from pathlib import Path

import pytest

from lib_handrefiner.cli import COMMANDS

README = Path(__file__).resolve().parents[1] / "README.md"


def _parsers(name: str):
    parser = argparse.ArgumentParser(prog=name)
    importlib.import_module(COMMANDS[name][0]).add_arguments(parser)
    yield parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            yield from action.choices.values()


def _options(parser: argparse.ArgumentParser):
    return [a for a in parser._actions if a.option_strings and not isinstance(a, argparse._HelpAction)]


@pytest.mark.parametrize("command", list(COMMANDS))
def test_every_option_has_a_help_text(command):
    missing = [a.option_strings[0] for p in _parsers(command) for a in _options(p) if not (a.help or "").strip()]
    assert not missing, f"{command}: options without help: {missing}"


def test_every_flag_the_readme_names_for_a_command_exists():
    text = README.read_text()
    section = text[text.index("## Command line"):text.index("## How it works")]
    serve = text[text.index("python -m lib_handrefiner serve --checkpoint"):]
    named = set(re.findall(r"(?<![\w-])--[a-z][a-z0-9-]+", section + serve[:300]))
    known = {"--help"} | {s for c in COMMANDS for p in _parsers(c) for a in _options(p) for s in a.option_strings}
    assert named and not (named - known), f"README names flags no command has: {sorted(named - known)}"
