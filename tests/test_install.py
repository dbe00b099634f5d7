"""install.py through the WebUI's `launch` interface (the stand-in records pip commands)."""
from __future__ import annotations

import importlib.util
import re
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
STUB = Path(__file__).resolve().parent / "webui_stub"


@pytest.fixture()
def installer():
    spec = importlib.util.spec_from_file_location("handrefiner_install", ROOT / "install.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the file runs
    try:
        spec.loader.exec_module(module)
        yield module
    finally:
        sys.modules.pop(spec.name, None)


@pytest.fixture()
def launch():
    sys.path.insert(0, str(STUB))
    sys.modules.pop("launch", None)
    try:
        import launch as stub

        stub.installed.clear()
        stub.pip_commands.clear()
        yield stub
    finally:
        sys.path.remove(str(STUB))
        sys.modules.pop("launch", None)


WEBUI_ENV = {"numpy": "1.26.2", "pydantic": "1.10.17"}


def run(installer, launch, installed, system="linux", machine="x86_64", seen_constraints=None):
    launch.installed.update({**WEBUI_ENV, **installed})

    def run_pip(command, desc=None, live=False):
        launch.pip_commands.append(command)
        if seen_constraints is not None:
            path = re.search(r'-c "([^"]+)"', command).group(1)
            seen_constraints.append(Path(path).read_text())

    launch.run_pip = run_pip
    return installer.install(launch, version_of=launch.installed.get, system=system, machine=machine)


def test_nothing_to_do_when_everything_is_installed(installer, launch, capsys):
    assert run(installer, launch, {"mediapipe": "0.10.21", "open3d-cpu": "0.20.0"}) == []
    assert launch.pip_commands == []
    assert capsys.readouterr().out == ""


def test_other_compatible_versions_and_the_full_open3d_are_accepted(installer, launch):
    assert run(installer, launch, {"mediapipe": "0.10.14", "open3d": "0.18.0"}) == []


def test_missing_packages_get_the_pins_and_numpy_pydantic_are_held(installer, launch):
    constraints = []
    commands = run(installer, launch, {}, seen_constraints=constraints)
    assert commands == launch.pip_commands
    assert len(commands) == 2
    assert '"mediapipe==0.10.21"' in commands[0]
    assert '"open3d-cpu==0.20.0"' in commands[1] and '"dash<3"' in commands[1]
    for text in constraints:
        assert set(text.split()) == {"numpy==1.26.2", "pydantic==1.10.17"}
    # the constraint file is gone afterwards
    assert not Path(re.search(r'-c "([^"]+)"', commands[0]).group(1)).exists()


def test_open3d_elsewhere_is_the_full_package(installer, launch):
    for system, machine in (("darwin", "arm64"), ("win32", "AMD64"), ("linux", "aarch64")):
        launch.pip_commands.clear()
        commands = run(installer, launch, {"mediapipe": "0.10.21"}, system=system, machine=machine)
        assert len(commands) == 1 and '"open3d==0.20.0"' in commands[0] and "open3d-cpu" not in commands[0]


def test_too_new_or_too_old_versions_are_replaced(installer, launch):
    commands = run(installer, launch, {"mediapipe": "0.10.30", "open3d-cpu": "0.16.0"})
    assert len(commands) == 2 and '"mediapipe==0.10.21"' in commands[0] and "open3d-cpu==0.20.0" in commands[1]


def test_without_numpy_or_pydantic_the_constraint_still_forbids_version_2(installer):
    assert set(installer.constraints(lambda name: None).split()) == {"numpy<2", "pydantic<2"}


def test_version_parsing(installer):
    assert installer.version_tuple("0.10.21") == (0, 10, 21)
    assert installer.version_tuple("0.20.0+cpu") == (0, 20, 0)
    assert installer.version_tuple("1.26.0rc1") == (1, 26, 0)
