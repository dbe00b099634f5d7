"""The README stays true: its two commands are the ones CI and a newcomer run, and its options table lists every
field of the settings model with its default."""
from __future__ import annotations

import re
from pathlib import Path

from lib_handrefiner.args import HandRefinerArgs

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def _two_commands() -> list[str]:
    block = re.search(r"## Try it.*?```bash\n(.*?)```", README, re.S).group(1)
    return [line for line in block.splitlines() if line.strip()]


def test_readme_has_exactly_two_setup_commands_and_ci_runs_the_test_one():
    setup_and_detect, tests = _two_commands()
    assert setup_and_detect.startswith("bash dev/setup.sh && ") and " detect examples/" in setup_and_detect
    image = re.search(r"(examples/\S+)", setup_and_detect).group(1)
    assert (ROOT / image).is_file()
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    assert "bash dev/setup.sh" in ci and ci[-1] == tests


def test_readme_options_table_lists_every_field_with_its_default():
    for name, field in HandRefinerArgs.__fields__.items():
        row = re.search(rf"^\| `{name}` \| `([^`]*)` \| `([^`]*)` \|", README, re.M)
        assert row is not None, f"README's options table lacks {name}"
        assert row.group(2) == field.field_info.title
        default = field.default
        if isinstance(default, list) and default and not isinstance(default[0], (list, tuple)):
            assert row.group(1) == ", ".join(f"{x:g}" for x in default)
        elif not isinstance(default, (list, str)):
            assert row.group(1) == str(default)
