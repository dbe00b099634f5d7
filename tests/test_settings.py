"""One settings model, one codec per surface: the same cases through the infotext, the command line, the widgets,
the script args (positional and named) and the API's alwayson check, each field reaching every surface, and the
settings package on pydantic 1 and pydantic 2 alike."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import ValidationError
from settings_cases import BAD, CASES, SPELLINGS, surfaces_digest

from lib_handrefiner import settings as s
from lib_handrefiner.api import script_args_errors
from lib_handrefiner.settings import HandRefinerArgs

ROOT = Path(__file__).resolve().parents[1]
PYDANTIC2 = Path(sys.prefix) / "pydantic2"   # dev/setup.sh installs pydantic 2 there (`pip install --target`)


def _plain(value):
    return [_plain(v) for v in value] if isinstance(value, (list, tuple)) else value


@pytest.mark.parametrize("name, value, widget, text", CASES, ids=[f"{c[0]}={c[3]!r}" for c in CASES])
def test_a_value_means_the_same_through_every_surface(name, value, widget, text):
    args = HandRefinerArgs(**{name: value})
    title = s.FIELDS[name].title
    # infotext: written (when not the default) and read back
    if value != s.FIELDS[name].default or name in ("enabled", "strength", "mode"):
        assert str(s.to_infotext(args)[title]) == text   # the WebUI writes each value with str()
    assert getattr(s.from_infotext({"HandRefiner": "True", title: text}), name) == value
    # command line: --set NAME=VALUE, in the infotext's text
    parsed = dict([s.parse_setting(f"{name}={text}")])
    assert getattr(HandRefinerArgs(**parsed), name) == value
    # widgets: shown and read back
    assert s.to_widget(name, value) == widget
    assert getattr(s.from_script_args({name: widget}), name) == value
    # script args: positional (None = default) and named; the API's early check accepts both
    positional = [None] * s.field_names().index(name) + [widget]
    assert getattr(s.from_script_args(positional), name) == value
    assert script_args_errors(positional) == [] and script_args_errors([{name: widget}]) == []


def test_a_whole_settings_object_survives_each_surface():
    args = HandRefinerArgs(**{name: value for name, value, _, _ in CASES})
    assert s.from_infotext(s.to_infotext(args)) == args
    assert s.from_script_args([s.to_widget(n, getattr(args, n)) for n in s.field_names()]) == args
    assert s.from_script_args([s.as_dict(args)]) == args == HandRefinerArgs(**s.as_dict(args))
    cli = dict(s.parse_setting(f"{k}={v}") for k, v in _by_name(s.to_infotext(args)).items())
    assert HandRefinerArgs(**cli) == args


def _by_name(infotext):
    by_title = {f.title: n for n, f in s.FIELDS.items()}
    return {by_title[k]: v for k, v in infotext.items()}


@pytest.mark.parametrize("name, text, value", SPELLINGS, ids=[f"{c[0]}={c[1]!r}" for c in SPELLINGS])
def test_text_spellings_read_the_same_in_the_infotext_the_command_line_and_widgets(name, text, value):
    from_infotext = getattr(s.from_infotext({"HandRefiner": "True", s.FIELDS[name].title: text}), name)
    from_cli = getattr(HandRefinerArgs(**dict([s.parse_setting(f"{name}={text}")])), name)
    assert _plain(from_infotext) == _plain(from_cli) == _plain(value)
    if s.FIELDS[name].kind != "bool":   # a checkbox sends a bool, not text
        assert _plain(getattr(s.from_script_args({name: text}), name)) == _plain(value)


def test_a_word_that_is_not_a_boolean_is_an_error_everywhere():
    # (the infotext read "on" as False and anything unknown as False, the command line "on" as True)
    with pytest.raises(ValueError, match="not true or false"):
        s.parse_setting("crop=maybe")
    with pytest.raises(ValueError, match="HandRefiner crop.*not true or false"):
        s.from_infotext({"HandRefiner": "True", "HandRefiner crop": "maybe"})
    assert s.from_infotext({"HandRefiner": "on", "HandRefiner crop": "off"}).crop is False


def test_the_api_check_accepts_what_the_webui_script_accepts():
    # HandRefinerArgs.from_script_args, the API's check, refused this list the WebUI's script accepted.
    values = [True, 0.7, "adaptive", "0.3, 0.6", None]
    args = s.from_script_args(values)
    assert (args.enabled, args.strength, args.mode, args.adaptive_strengths) == (True, 0.7, "adaptive", [0.3, 0.6])
    assert script_args_errors(values) == []
    from lib_handrefiner import webui
    assert webui.args_from_script_args(values) == args


@pytest.mark.parametrize("name, value", BAD)
def test_a_bad_value_is_refused_by_every_surface_naming_the_field(name, value):
    positional = [None] * s.field_names().index(name) + [value]
    for read in (lambda: HandRefinerArgs(**{name: value}), lambda: s.from_script_args({name: value}),
                 lambda: s.from_script_args(positional)):
        with pytest.raises(ValidationError) as info:
            read()
        assert s.describe_error(info.value).startswith(f"{name}")
        assert "\n" not in s.describe_error(info.value)
    errors = script_args_errors(positional)
    assert [e["loc"][-1] for e in errors] == [name]


def test_an_unknown_field_is_named_with_the_closest_one():
    with pytest.raises(ValidationError) as info:
        s.from_script_args([{"strenght": 0.4}])
    assert s.describe_error(info.value) == "unknown setting 'strenght'; did you mean 'strength'?"
    with pytest.raises(ValueError, match="at most"):
        s.from_script_args([None] * (len(s.FIELDS) + 1))


def test_one_error_line_on_every_text_surface():
    import gradio as gr

    from lib_handrefiner.cli.common import settings_error
    from lib_handrefiner.ui import args_from_controls

    with pytest.raises(ValidationError) as info:
        HandRefinerArgs(steps=0, mode="magic")
    line = s.describe_error(info.value)
    assert line.startswith("mode: ") and "; steps: " in line and "\n" not in line
    assert settings_error(info.value) == line
    from lib_handrefiner import webui
    assert webui.describe_error(info.value) == line
    with pytest.raises(gr.Error) as editor:
        args_from_controls(HandRefinerArgs(), ["mode", "steps"], ["magic", 0.0])
    assert editor.value.message == line


def test_box_text_is_read_by_one_parser_on_every_surface():
    from lib_handrefiner.ui import parse_boxes as editor_boxes

    text = "10 20 30 40; 50,60,70,80"
    expected = [(10.0, 20.0, 30.0, 40.0), (50.0, 60.0, 70.0, 80.0)]
    assert s.parse_boxes(text) == expected
    assert s.from_infotext({"HandRefiner": "True", "HandRefiner boxes": text}).boxes == expected
    assert s.parse_setting(f"boxes={text}")[1] == expected
    assert s.from_script_args({"boxes": text}).boxes == expected
    assert editor_boxes(text, 100, 100) == [(10, 20, 30, 40), (50, 60, 70, 80)]   # the editor also clips to the image
    for bad in ("[[1, 2, 3, 4]", "1 2 x 4", "[5]"):
        with pytest.raises(ValueError, match="box"):
            s.parse_boxes(bad)


def test_slider_floats_become_integers_in_one_place():
    from lib_handrefiner.ui import args_from_controls

    assert s.from_widget("steps", 12.0) == 12 and isinstance(s.from_widget("steps", 12.0), int)
    assert s.from_widget("strength", 1.0) == 1.0 and s.from_widget("steps", 12.5) == 12.5   # the model refuses it
    assert args_from_controls(HandRefinerArgs(), ["steps", "seed"], [12.0, 7.0]).steps == 12


def test_every_field_reaches_the_accordion_the_api_the_infotext_the_command_line_and_the_readme():
    """What makes "a new setting is one field": nothing else lists the fields one by one."""
    from lib_handrefiner.api import REQUEST_FIELDS
    from lib_handrefiner.settings.text import format_text

    readme = (ROOT / "README.md").read_text()
    assert sorted(s.layout_fields()) == sorted(s.field_names()[1:])   # "enabled" is the accordion itself
    assert set(s.field_names()) <= set(REQUEST_FIELDS)                 # the API's body is the model
    for name, field in s.FIELDS.items():
        text = format_text(field.default)
        if name != "enabled":
            assert s.from_infotext({"HandRefiner": "True", field.title: text}) == HandRefinerArgs(enabled=True), name
        assert HandRefinerArgs(**dict([s.parse_setting(f"{name.replace('_', '-')}={text}")])) == HandRefinerArgs()
        assert s.from_script_args({name: s.to_widget(name, field.default)}) == HandRefinerArgs(), name
        assert f"| `{name}` |" in readme and f"| `{field.title}` |" in readme, name


def test_a_field_of_no_group_goes_in_more_at_the_end(monkeypatch):
    from lib_handrefiner.settings import groups as settings_groups

    groups = dict(settings_groups.GROUPS)
    assert "accordion:More" not in dict(s.layout())   # every field has its group today
    groups["accordion:Sampling"] = tuple(n for n in groups["accordion:Sampling"] if n != "seed")   # as if it were new
    monkeypatch.setattr(settings_groups, "GROUPS", groups)
    assert s.layout()[-1] == ("accordion:More", ["seed"])
    assert sorted(s.layout_fields()) == sorted(s.field_names()[1:])   # every field placed once


def test_the_settings_package_needs_only_pydantic():
    code = ("import sys, lib_handrefiner.settings; "
            "print(sorted(m for m in ('torch', 'numpy', 'gradio', 'fastapi', 'PIL') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_the_settings_package_behaves_the_same_on_pydantic_2():
    if not (PYDANTIC2 / "pydantic").is_dir():
        pytest.skip(f"pydantic 2 is not installed in {PYDANTIC2}: run bash dev/setup.sh")
    env = {**os.environ, "PYTHONPATH": str(PYDANTIC2)}
    run = subprocess.run([sys.executable, "-W", "error::DeprecationWarning", str(ROOT / "tests" / "settings_cases.py")],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    on_2 = json.loads(run.stdout)
    on_1 = json.loads(json.dumps(surfaces_digest(), sort_keys=True))
    assert (on_1.pop("pydantic_major"), on_2.pop("pydantic_major")) == (1, 2)
    for key in on_1:
        assert on_2[key] == on_1[key], key
