"""The WebUI stand-in (tests/webui_stub) stays what its README says: our own code, no more of the WebUI than the
extension and its tests use. The project's files repeat no upstream code (dev/upstream_overlap.py's measure; only
where the upstream mirrors are on this machine)."""
from __future__ import annotations

import ast
import importlib.util
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
STUB = ROOT / "tests" / "webui_stub"
# The stand-in's modules (k_diffusion/ only loads the real package from PyPI: no WebUI names of its own).
STAND_IN = sorted(p for p in STUB.rglob("*.py") if "k_diffusion" not in p.parts)
USERS = [*sorted((ROOT / "scripts").rglob("*.py")), *sorted((ROOT / "lib_handrefiner").rglob("*.py")),
         ROOT / "install.py", ROOT / "preload.py",
         *sorted(p for p in (ROOT / "tests").glob("*.py"))]


def _load_overlap():
    spec = importlib.util.spec_from_file_location("upstream_overlap", ROOT / "dev" / "upstream_overlap.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module   # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def defined_names(path: Path) -> set[str]:
    """The public names a module defines at its top level (functions, classes, assignments)."""
    names = set()
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            for target in targets:
                names.update(n.id for n in ast.walk(target) if isinstance(n, ast.Name))
    return {n for n in names if not n.startswith("_")}


def referenced_names(path: Path) -> set[str]:
    """Every name a file reads: variables, attributes, imported names, and quoted ones (getattr(x, "name"))."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Name):
            found.add(node.id)
        elif isinstance(node, ast.Attribute):
            found.add(node.attr)
        elif isinstance(node, ast.alias):
            found.update({node.name.split(".")[-1], node.name.split(".")[0]})
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value.isidentifier():
            found.add(node.value)
    return found


def test_every_name_the_stand_in_defines_is_used_by_the_extension_its_tests_or_another_stand_in_module():
    """A public name nobody reads is WebUI code the extension does not need: it goes, or becomes private."""
    used_outside = set().union(*(referenced_names(p) for p in USERS))
    unused = {}
    for module in STAND_IN:
        others = set().union(*(referenced_names(p) for p in STAND_IN if p != module))
        idle = defined_names(module) - used_outside - others
        if idle:
            unused[str(module.relative_to(STUB))] = sorted(idle)
    assert unused == {}


def test_the_check_sees_an_unused_name(tmp_path):
    module = tmp_path / "fake.py"
    module.write_text("import os\n\ndef used():\n    pass\n\ndef spare_webui_function():\n    pass\n_private = 1\n")
    user = tmp_path / "user.py"
    user.write_text("from modules import fake\nfake.used()\n")
    assert defined_names(module) - referenced_names(user) == {"spare_webui_function"}


@pytest.fixture(scope="module")
def overlap():
    measure = _load_overlap()
    projects = [p for p in measure.UPSTREAM if measure.available(p)]
    if "webui" not in projects:
        pytest.skip(f"no mirror of the WebUI under {measure.mirrors()} (the name check above still runs)")
    return measure, {p: measure.upstream_lines(p) for p in projects}


def test_the_stand_in_is_not_the_webuis_code(overlap):
    """Per stand-in file: at most a fifth (or 4) of its long lines equal an upstream line (signature lines apart:
    a stand-in must have the real ones), and never more than 3 such lines in a row. Before the rewrite,
    processing.py had 170 of 271, sd_samplers_common 61 of 92, sd_samplers_kdiffusion 60 of 76."""
    measure, upstream = overlap
    too_close = {}
    for path in STAND_IN:
        o = measure.overlap(path, upstream)
        equal = max(len(lines) for lines in o.equal.values()) if o.equal else 0
        if equal > max(4, o.long_lines // 5) or o.longest_run > 3:
            too_close[str(path.relative_to(ROOT))] = (equal, o.long_lines, o.longest_run)
    assert too_close == {}


def test_no_file_of_the_project_repeats_upstream_code(overlap):
    """No run of more than 4 long lines equal to an upstream project's, anywhere in the project."""
    measure, upstream = overlap
    files = measure.project_files([ROOT / d for d in ("lib_handrefiner", "scripts", "javascript", "tests")]
                                  + [ROOT / "install.py", ROOT / "preload.py"])
    runs = {str(f.relative_to(ROOT)): measure.overlap(f, upstream).longest_run for f in files}
    assert {f: run for f, run in runs.items() if run > 4} == {}


def test_the_measure_finds_a_copied_function(overlap, tmp_path):
    measure, upstream = overlap
    copied = tmp_path / "copied.py"
    source = measure.UPSTREAM["webui"]
    import subprocess
    text = subprocess.run(["git", "-C", str(measure.mirrors() / source[0] / "repo"), "show",
                           f"{source[1]}:modules/sd_samplers_common.py"], capture_output=True, text=True).stdout
    copied.write_text(text)
    o = measure.overlap(copied, upstream)
    assert o.longest_run > 10 and max(map(len, o.equal.values())) > o.long_lines // 2
