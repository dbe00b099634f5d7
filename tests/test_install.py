"""install.py's decisions through the WebUI's `launch` interface (the stand-in's pip records what it is asked)."""
from __future__ import annotations

import importlib.util
import re
import shlex
import sys
from pathlib import Path

import pytest
from conftest import ROOT, webui_stand_in


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
def webui_dir(tmp_path, monkeypatch):
    """The WebUI's folder (the stand-in's modules.paths.script_path), holding its requirements file."""
    folder = tmp_path / "webui"
    folder.mkdir()
    monkeypatch.setenv("HANDREFINER_STUB_WEBUI_DIR", str(folder))
    return folder


@pytest.fixture()
def launch(webui_dir):
    with webui_stand_in():   # imported anew: its modules.paths reads the folder set above
        import launch as stub

        stub.launch_utils.installed.clear()
        stub.launch_utils.pip_commands.clear()
        yield stub


# A requirements file in the WebUI 1.10.1's format: pins with comments after them, an unpinned line, a blank line.
WEBUI_REQUIREMENTS = """setuptools==69.5.1  # a comment after a pin
GitPython==3.1.32
Pillow==9.5.0
fastapi==0.94.0
numpy==1.26.2
protobuf==3.20.0
psutil==5.9.5
torch
transformers==4.30.2

httpx==0.24.1
"""
# What such a WebUI has installed (pydantic comes through fastapi/gradio, unpinned; opencv-python through its deps).
WEBUI_ENV = {"setuptools": "80.10.2", "GitPython": "3.1.32", "Pillow": "9.5.0", "fastapi": "0.94.0",
             "numpy": "1.26.2", "protobuf": "3.20.0", "psutil": "5.9.5", "torch": "2.13.0+cpu",
             "transformers": "4.30.2", "httpx": "0.24.1", "pydantic": "1.10.17", "opencv-python": "4.11.0.86",
             "attrs": "26.1.0", "matplotlib": "3.11.2"}
EVERYTHING = {"mediapipe": "0.10.11", "open3d-cpu": "0.20.0", "dash": "2.18.2", "absl-py": "2.5.1",
              "flatbuffers": "25.12.19"}
# What the mediapipe wheels declare (importlib.metadata.requires), abridged to the lines that matter.
MEDIAPIPE_REQUIRES = {
    "0.10.11": ["absl-py", "jax", "numpy", "opencv-contrib-python", "protobuf<4,>=3.11", "sounddevice>=0.4.4"],
    "0.10.14": ["absl-py", "jax", "numpy", "opencv-contrib-python", "protobuf<5,>=4.25.3", "sounddevice>=0.4.4"],
    "0.10.21": ["absl-py", "numpy<2", "opencv-contrib-python", "protobuf<5,>=4.25.3", "sentencepiece"],
}


def run(installer, launch, installed, environment=WEBUI_ENV, system="linux", machine="x86_64", seen=None,
        environ=None):
    """install.py's install() in a WebUI whose distributions are `environment` + `installed` (None: removed);
    `seen` collects the constraints file of each pip command."""
    packages = {**environment, **installed}
    launch.launch_utils.installed.update({k: v for k, v in packages.items() if v is not None})
    versions = launch.launch_utils.installed

    def requires_of(distribution):
        return MEDIAPIPE_REQUIRES.get(versions.get(distribution)) if distribution == "mediapipe" else []

    def run_pip(command, desc=None, live=False):
        launch.launch_utils.pip_commands.append(command)
        if seen is not None:
            seen.append(Path(re.search(r'-c "([^"]+)"', command).group(1)).read_text())

    launch.run_pip = run_pip
    return installer.install(launch, version_of=versions.get, system=system, machine=machine,
                             requires_of=requires_of, environ=environ if environ is not None else {})


def specifiers(command):
    """The requirement specifiers of a recorded `install …` command, and whether it is --no-deps."""
    words = shlex.split(command)
    assert words[0] == "install" and "-c" in words
    words = words[1:words.index("-c")]
    return [w for w in words if not w.startswith("-")], "--no-deps" in words


def test_nothing_to_do_when_everything_is_installed(installer, launch, capsys):
    assert run(installer, launch, EVERYTHING) == []
    assert launch.launch_utils.pip_commands == []
    assert capsys.readouterr().out == ""


def test_other_compatible_versions_and_the_full_open3d_are_accepted(installer, launch):
    assert run(installer, launch, {**EVERYTHING, "mediapipe": "0.10.14", "protobuf": "4.25.3", "open3d-cpu": None,
                                   "open3d": "0.18.0", "opencv-python": None,
                                   "opencv-contrib-python": "4.9.0.80"}) == []


def test_a_fresh_webui_gets_mediapipe_and_open3d_without_their_declared_dependencies(installer, launch, webui_dir):
    """What the hand graph and `import open3d` need is installed with its dependencies; mediapipe and open3d
    themselves without theirs: no opencv-contrib-python beside the WebUI's opencv-python, no jax, no jupyter."""
    (webui_dir / "requirements_versions.txt").write_text(WEBUI_REQUIREMENTS)
    seen = []
    commands = run(installer, launch, {}, seen=seen)
    assert commands == launch.launch_utils.pip_commands and len(commands) == 2
    with_deps, without_deps = (specifiers(c) for c in commands)
    assert with_deps == (["absl-py", "flatbuffers>=2.0", "dash>=2.6,<3"], False)
    # the WebUI's protobuf 3.20.0: the mediapipe releases built for protobuf 3 (pip picks 0.10.11)
    assert without_deps == (["mediapipe>=0.10.9,<=0.10.11", "open3d-cpu==0.20.0"], True)
    everything = " ".join(commands).lower()
    for unwanted in ("opencv", "jax", "sounddevice", "ipywidgets", "nbformat", "torch"):
        assert unwanted not in everything


def test_every_installed_webui_pin_and_numpy_pydantic_protobuf_are_held(installer, launch, webui_dir):
    (webui_dir / "requirements_versions.txt").write_text(WEBUI_REQUIREMENTS)
    seen = []
    commands = run(installer, launch, {"GitPython": None}, seen=seen)
    assert len(seen) == 2 and seen[0] == seen[1]
    held = set(seen[0].split())
    # installed pins at their installed versions (setuptools as installed, not as the file says); GitPython is
    # pinned but not installed: not held; torch is unpinned; pydantic is not pinned but held
    assert held == {"setuptools==80.10.2", "Pillow==9.5.0", "fastapi==0.94.0", "numpy==1.26.2", "protobuf==3.20.0",
                    "psutil==5.9.5", "transformers==4.30.2", "httpx==0.24.1", "pydantic==1.10.17"}
    assert not Path(re.search(r'-c "([^"]+)"', commands[0]).group(1)).exists()   # removed afterwards


def test_the_requirements_file_is_the_one_the_launcher_reads(installer, launch, webui_dir, tmp_path, monkeypatch):
    """$REQS_FILE (as the launcher: relative to the working directory, else in the WebUI's folder), default
    requirements_versions.txt in the WebUI's folder; without any file only the held packages are held."""
    (webui_dir / "requirements_versions.txt").write_text("psutil==5.9.5\n")
    (webui_dir / "requirements_cpu.txt").write_text("Pillow==9.5.0\n")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "reqs.txt").write_text("httpx==0.24.1\n")
    monkeypatch.chdir(elsewhere)
    cases = [({}, "psutil==5.9.5"), ({"REQS_FILE": "requirements_cpu.txt"}, "Pillow==9.5.0"),
             ({"REQS_FILE": "reqs.txt"}, "httpx==0.24.1"),
             ({"REQS_FILE": str(elsewhere / "reqs.txt")}, "httpx==0.24.1"),
             ({"REQS_FILE": "missing.txt"}, None)]
    for environ, pin in cases:
        seen = []
        launch.launch_utils.pip_commands.clear()
        run(installer, launch, {}, seen=seen, environ=environ)
        held = set(seen[0].split())
        assert held - {pin} == {"numpy==1.26.2", "protobuf==3.20.0", "pydantic==1.10.17"}, environ
        assert pin is None or pin in held


def test_exactly_one_opencv_distribution(installer, launch):
    """Any installed OpenCV distribution serves MediaPipe; only a WebUI without any gets one: opencv-python."""
    for present in ("opencv-python", "opencv-python-headless", "opencv-contrib-python"):
        launch.launch_utils.installed.clear()
        launch.launch_utils.pip_commands.clear()
        others = {name: None for name in installer.OPENCV}
        assert run(installer, launch, {**EVERYTHING, **others, present: "4.11.0.86"}) == []
    launch.launch_utils.installed.clear()
    commands = run(installer, launch, {**EVERYTHING, "opencv-python": None})
    assert [specifiers(c) for c in commands] == [(["opencv-python"], False)]


def test_without_numpy_pydantic_or_protobuf(installer, launch):
    """numpy and pydantic are still kept below 2; mediapipe comes with the protobuf its newest releases need."""
    seen = []
    commands = run(installer, launch, {}, environment={}, seen=seen)
    with_deps, without_deps = (specifiers(c) for c in commands)
    assert "protobuf>=4.25.3,<5" in with_deps[0] and "opencv-python" in with_deps[0] and "matplotlib" in with_deps[0]
    assert "mediapipe>=0.10.13,<=0.10.21" in without_deps[0]
    assert set(seen[0].split()) == {"numpy<2", "pydantic<2"}


def test_the_mediapipe_release_follows_the_installed_protobuf(installer, launch):
    commands = run(installer, launch, {**EVERYTHING, "mediapipe": None, "protobuf": "4.25.3"})
    assert [specifiers(c) for c in commands] == [(["mediapipe>=0.10.13,<=0.10.21"], True)]


def test_a_mediapipe_that_needs_another_protobuf_than_the_webuis_is_replaced(installer, launch):
    """The WebUI puts protobuf 3.20.0 back on every start; mediapipe 0.10.21 (protobuf>=4.25.3) then fails to
    build its graph. It is replaced by a release built for protobuf 3."""
    seen = []
    commands = run(installer, launch, {**EVERYTHING, "mediapipe": "0.10.21"}, seen=seen)
    assert [specifiers(c) for c in commands] == [(["mediapipe>=0.10.9,<=0.10.11"], True)]
    assert "protobuf==3.20.0" in seen[0].split()
    # with the protobuf it declares, 0.10.21 is fine
    launch.launch_utils.pip_commands.clear()
    assert run(installer, launch, {**EVERYTHING, "mediapipe": "0.10.21", "protobuf": "4.25.3"}) == []


def test_a_protobuf_no_hand_tracker_release_fits_is_said_and_mediapipe_left_alone(installer, launch, capsys):
    commands = run(installer, launch, {**EVERYTHING, "mediapipe": None, "protobuf": "5.29.1"})
    assert commands == []
    out = capsys.readouterr().out
    assert "protobuf 5.29.1" in out and "0.10.9-0.10.11" in out


def test_too_new_or_too_old_versions_are_replaced(installer, launch):
    commands = run(installer, launch, {**EVERYTHING, "mediapipe": "0.10.30", "open3d-cpu": "0.16.0",
                                       "dash": "3.0.4"})
    assert [specifiers(c) for c in commands] == [(["dash>=2.6,<3"], False),
                                                 (["mediapipe>=0.10.9,<=0.10.11", "open3d-cpu==0.20.0"], True)]


def test_open3d_elsewhere_is_the_full_package(installer, launch):
    for system, machine in (("darwin", "arm64"), ("win32", "AMD64"), ("linux", "aarch64")):
        launch.launch_utils.pip_commands.clear()
        commands = run(installer, launch, {**EVERYTHING, "open3d-cpu": None}, system=system, machine=machine)
        assert [specifiers(c) for c in commands] == [(["open3d==0.20.0"], True)]


def test_held_back_conflicts_read_the_declared_requirements(installer):
    versions = {"protobuf": "3.20.0", "numpy": "1.26.2"}.get
    requires = {"a": ["protobuf<5,>=4.25.3", "numpy<2", "requests>=99"],
                "b": ["protobuf>=4; python_version < '3'", "protobuf[extra]<4", "numpy>=2; extra == 'dev'"]}.get
    assert installer.held_back_conflicts("a", versions, requires) == [
        "protobuf 3.20.0 (a needs protobuf<5,>=4.25.3)"]
    assert installer.held_back_conflicts("b", versions, requires) == []   # markers that do not apply; extras
    assert installer.held_back_conflicts("c", versions, requires) == []   # nothing declared


def test_pins_are_read_like_the_launcher_reads_them(installer):
    assert installer.pinned("a==1.0  # why\nb\n# c==2\nd == 3.1 ; python_version < '4'\ne>=2\n\nf_g==0.1.1\n") == [
        "a", "d", "f_g"]


def test_version_parsing(installer):
    assert installer.version_tuple("0.10.21") == (0, 10, 21)
    assert installer.version_tuple("0.20.0+cpu") == (0, 20, 0)
    assert installer.version_tuple("1.26.0rc1") == (1, 26, 0)
