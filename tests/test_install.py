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


WEBUI_ENV = {"numpy": "1.26.2", "pydantic": "1.10.17", "protobuf": "3.20.0"}   # the WebUI 1.10 pins protobuf
# What the mediapipe wheels declare (importlib.metadata.requires), abridged to the lines that matter.
MEDIAPIPE_REQUIRES = {
    "0.10.11": ["absl-py", "numpy", "opencv-contrib-python", "protobuf<4,>=3.11", "sounddevice>=0.4.4"],
    "0.10.14": ["absl-py", "numpy", "opencv-contrib-python", "protobuf<5,>=4.25.3", "sounddevice>=0.4.4"],
    "0.10.21": ["absl-py", "numpy<2", "opencv-contrib-python", "protobuf<5,>=4.25.3", "sentencepiece"],
}


def run(installer, launch, installed, system="linux", machine="x86_64", seen_constraints=None):
    launch.installed.update({**WEBUI_ENV, **installed})

    def requires_of(distribution):
        return MEDIAPIPE_REQUIRES.get(launch.installed.get(distribution)) if distribution == "mediapipe" else []

    def run_pip(command, desc=None, live=False):
        launch.pip_commands.append(command)
        if seen_constraints is not None:
            path = re.search(r'-c "([^"]+)"', command).group(1)
            seen_constraints.append(Path(path).read_text())

    launch.run_pip = run_pip
    return installer.install(launch, version_of=launch.installed.get, system=system, machine=machine,
                             requires_of=requires_of)


def test_nothing_to_do_when_everything_is_installed(installer, launch, capsys):
    assert run(installer, launch, {"mediapipe": "0.10.11", "open3d-cpu": "0.20.0"}) == []
    assert launch.pip_commands == []
    assert capsys.readouterr().out == ""


def test_other_compatible_versions_and_the_full_open3d_are_accepted(installer, launch):
    assert run(installer, launch, {"mediapipe": "0.10.14", "protobuf": "4.25.3", "open3d": "0.18.0"}) == []


def test_missing_packages_get_the_pins_and_numpy_pydantic_protobuf_are_held(installer, launch):
    constraints = []
    commands = run(installer, launch, {}, seen_constraints=constraints)
    assert commands == launch.pip_commands
    assert len(commands) == 2
    # a range: pip picks the newest mediapipe that runs with the held protobuf (0.10.11 with the WebUI's 3.20.0)
    assert '"mediapipe>=0.10.9,<=0.10.21"' in commands[0]
    assert '"open3d-cpu==0.20.0"' in commands[1] and '"dash<3"' in commands[1]
    for text in constraints:
        assert set(text.split()) == {"numpy==1.26.2", "pydantic==1.10.17", "protobuf==3.20.0"}
    # the constraint file is gone afterwards
    assert not Path(re.search(r'-c "([^"]+)"', commands[0]).group(1)).exists()


def test_open3d_elsewhere_is_the_full_package(installer, launch):
    for system, machine in (("darwin", "arm64"), ("win32", "AMD64"), ("linux", "aarch64")):
        launch.pip_commands.clear()
        commands = run(installer, launch, {"mediapipe": "0.10.11"}, system=system, machine=machine)
        assert len(commands) == 1 and '"open3d==0.20.0"' in commands[0] and "open3d-cpu" not in commands[0]


def test_too_new_or_too_old_versions_are_replaced(installer, launch):
    commands = run(installer, launch, {"mediapipe": "0.10.30", "open3d-cpu": "0.16.0"})
    assert len(commands) == 2 and '"mediapipe>=0.10.9,<=0.10.21' in commands[0] \
        and "open3d-cpu==0.20.0" in commands[1]


def test_a_mediapipe_that_needs_another_protobuf_than_the_webuis_is_replaced(installer, launch):
    """The WebUI puts protobuf 3.20.0 back on every start; mediapipe 0.10.21 (protobuf>=4.25.3) then fails to
    build its graph. It is replaced by one that fits the held protobuf, never by the same version again."""
    constraints = []
    commands = run(installer, launch, {"mediapipe": "0.10.21", "open3d-cpu": "0.20.0"}, seen_constraints=constraints)
    assert len(commands) == 1 and '"mediapipe>=0.10.9,<=0.10.21,!=0.10.21"' in commands[0]
    assert "protobuf==3.20.0" in constraints[0].split()
    # with the protobuf it declares, 0.10.21 is fine
    launch.pip_commands.clear()
    assert run(installer, launch, {"mediapipe": "0.10.21", "protobuf": "4.25.3", "open3d-cpu": "0.20.0"}) == []


def test_held_back_conflicts_read_the_declared_requirements(installer):
    versions = {"protobuf": "3.20.0", "numpy": "1.26.2"}.get
    requires = {"a": ["protobuf<5,>=4.25.3", "numpy<2", "requests>=99"],
                "b": ["protobuf>=4; python_version < '3'", "protobuf[extra]<4", "numpy>=2; extra == 'dev'"]}.get
    assert installer.held_back_conflicts("a", versions, requires) == [
        "protobuf 3.20.0 (a needs protobuf<5,>=4.25.3)"]
    assert installer.held_back_conflicts("b", versions, requires) == []   # markers that do not apply; extras
    assert installer.held_back_conflicts("c", versions, requires) == []   # nothing declared


def test_without_numpy_or_pydantic_the_constraint_still_forbids_version_2(installer):
    assert set(installer.constraints(lambda name: None).split()) == {"numpy<2", "pydantic<2"}


def test_version_parsing(installer):
    assert installer.version_tuple("0.10.21") == (0, 10, 21)
    assert installer.version_tuple("0.20.0+cpu") == (0, 20, 0)
    assert installer.version_tuple("1.26.0rc1") == (1, 26, 0)
