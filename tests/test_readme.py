"""The README stays true: its two commands are the ones CI and a newcomer run, and its options table lists every
field of the settings model with its default."""
from __future__ import annotations

import re
from pathlib import Path

from lib_handrefiner.settings import FIELDS, field_names

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


def test_readme_options_table_lists_every_field_in_order_with_its_default_and_infotext_key():
    rows = re.findall(r"^\| `(\w+)` \| `([^`]*)` \| `([^`]*)` \|", README, re.M)
    assert [name for name, _, _ in rows] == field_names(), "README's options table: one row per field, in order"
    for name, default, key in rows:
        field = FIELDS[name]
        assert key == field.title, name
        if field.kind == "floats":
            assert default == ", ".join(f"{x:g}" for x in field.default), name
        elif field.kind in ("str", "choice"):
            assert default == (field.default or '""'), name
        else:
            assert default == str(field.default), name
