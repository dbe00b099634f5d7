"""Outputs (issue 20, item 7): written atomically (temporary file + fsync + rename), as a set per image, never
through a symbolic link and never outside the output folder; a name that cannot be written fails that image alone."""
from __future__ import annotations

import os
import signal
import stat

import numpy as np
import pytest
from PIL import Image

from lib_handrefiner import safe_write
from lib_handrefiner.cli import main
from lib_handrefiner.safe_write import OutputError, OutputFolder, png


def _blank(path, value=128):
    Image.fromarray(np.full((64, 48, 3), value, np.uint8)).save(path)
    return path


def _models(tiny_models):
    return ["--checkpoint", str(tiny_models.checkpoint), "--controlnet", str(tiny_models.controlnet)]


def _leftovers(folder):
    return sorted(p.name for p in folder.rglob(f"{safe_write.TEMP_PREFIX}*"))


def _interrupting_png_writer(monkeypatch):
    """Makes PIL's PNG encoder write a few bytes and then receive Ctrl-C, as a user pressing it mid-save."""
    def interrupted(image, fp, filename, *args, **kwargs):
        fp.write(b"\x89PNG\r\n\x1a\n partial")
        raise KeyboardInterrupt

    monkeypatch.setitem(Image.SAVE, "PNG", interrupted)


def test_ctrl_c_while_refine_saves_leaves_the_previous_outputs_whole(tiny_models, tmp_path, monkeypatch):
    image = _blank(tmp_path / "blank.png")
    out = tmp_path / "out"
    assert main(["refine", str(image), *_models(tiny_models), "--out", str(out), "--save-mask"]) == 0
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    assert set(before) == {"blank.refined.png", "blank.refine.json", "blank.mask.png"}
    _interrupting_png_writer(monkeypatch)
    with pytest.raises(KeyboardInterrupt):
        main(["refine", str(image), *_models(tiny_models), "--out", str(out), "--save-mask", "--seed", "5"])
    # Nothing of the interrupted run: no truncated image, no new JSON without its image, no temporary file.
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    monkeypatch.undo()
    Image.open(out / "blank.refined.png").load()


@pytest.fixture
def python_ctrl_c():
    """Python's own Ctrl-C handler, which a test run started in the background (SIGINT ignored) does not have."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


def test_ctrl_c_during_the_renames_waits_until_the_set_is_complete(tmp_path, monkeypatch, python_ctrl_c):
    real_replace = os.replace
    calls = []

    def replace_then_interrupt(src, dst, *args, **kwargs):
        calls.append(dst)
        if len(calls) == 1:
            signal.raise_signal(signal.SIGINT)  # Ctrl-C between the JSON's rename and the image's
        return real_replace(src, dst, *args, **kwargs)

    monkeypatch.setattr(os, "replace", replace_then_interrupt)
    folder = OutputFolder(tmp_path / "out")
    with pytest.raises(KeyboardInterrupt):
        folder.write_set([("a.json", "{}"), ("a.png", png(np.zeros((4, 4), np.uint8)))])
    assert len(calls) == 2 and (tmp_path / "out" / "a.json").read_text() == "{}"
    assert Image.open(tmp_path / "out" / "a.png").size == (4, 4) and not _leftovers(tmp_path)


def test_detect_refuses_a_link_planted_in_out_and_goes_on_with_the_other_images(tmp_path, capsys):
    secret = tmp_path / "secret.txt"
    secret.write_text("not HandRefiner's to overwrite")
    out = tmp_path / "out"
    out.mkdir()
    (out / "a.hands.json").symlink_to(secret)
    images = [_blank(tmp_path / "a.png"), _blank(tmp_path / "b.png", 90)]
    code = main(["detect", *map(str, images), "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 1 and secret.read_text() == "not HandRefiner's to overwrite"
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "a.png" in lines[0] and "symbolic link" in lines[0] and "Traceback" not in err
    assert (out / "a.hands.json").is_symlink() and not (out / "a.depth.png").exists()  # a's set: none of it
    assert {p.name for p in out.iterdir() if p.name.startswith("b.")} == {
        "b.hands.json", "b.depth.png", "b.mask.png", "b.overlay.png"}
    assert not _leftovers(out)


def test_refine_too_long_names_and_links_fail_one_image_each(tiny_models, tmp_path, capsys):
    long_image = _blank(tmp_path / ("x" * 245 + ".png"))    # a valid name whose outputs' names are not
    linked = _blank(tmp_path / "linked.png")
    plain = _blank(tmp_path / "plain.png")
    outside = tmp_path / "outside.png"
    outside.write_bytes(b"keep")
    out = tmp_path / "out"
    out.mkdir()
    (out / "linked.refined.png").symlink_to(outside)
    code = main(["refine", str(long_image), str(linked), str(plain), *_models(tiny_models), "--out", str(out)])
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert code == 1 and len(errors) == 2 and "Traceback" not in err
    assert "255" in errors[0] and "shorter name" in errors[0]
    assert "linked.png" in errors[1] and "symbolic link" in errors[1]
    assert outside.read_bytes() == b"keep"
    assert {p.name for p in out.iterdir()} == {"linked.refined.png", "plain.refined.png", "plain.refine.json"}


def test_evaluate_never_writes_through_a_link(tmp_path, capsys):
    images = tmp_path / "images"
    images.mkdir()
    _blank(images / "a.png")
    outside = tmp_path / "outside.md"
    outside.write_text("keep")
    out = tmp_path / "out"
    out.mkdir()
    (out / "evaluation.md").symlink_to(outside)
    code = main(["evaluate", "--before", str(images), "--after", str(images), "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 2 and "symbolic link" in err and "evaluation.md" in err and outside.read_text() == "keep"


def test_names_stay_inside_the_folder_and_never_pass_a_link(tmp_path):
    folder = OutputFolder(tmp_path / "out")
    for name in ("../escape.png", "/tmp/abs.png", "a/../../b.png", "."):
        with pytest.raises(OutputError, match="inside"):
            folder.write(name, b"x")
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "out" / "validation").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(OutputError, match="symbolic link"):
        folder.write("validation/step-1.png", b"x")
    assert not any((tmp_path / "elsewhere").iterdir())
    (tmp_path / "out" / "taken").mkdir()
    with pytest.raises(OutputError, match="is a folder"):
        folder.write("taken", b"x")
    assert folder.write("sub/deeper/ok.txt", "é") == tmp_path / "out" / "sub" / "deeper" / "ok.txt"
    assert (tmp_path / "out" / "sub" / "deeper" / "ok.txt").read_text(encoding="utf-8") == "é"


def test_a_failing_writer_leaves_the_old_file_and_no_temporary(tmp_path):
    folder = OutputFolder(tmp_path)
    folder.write("report.json", b"old")

    def fails(f):
        f.write(b"new but not all of it")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        folder.write_set([("report.json", b"new"), ("image.png", fails)])
    assert (tmp_path / "report.json").read_bytes() == b"old" and not (tmp_path / "image.png").exists()
    assert not _leftovers(tmp_path)


def test_outputs_get_the_permissions_a_plain_open_gives(tmp_path):
    umask = os.umask(0o022)
    try:
        path = OutputFolder(tmp_path).write("a.txt", "x")
    finally:
        os.umask(umask)
    assert stat.S_IMODE(path.stat().st_mode) == 0o644


def test_stale_temporaries_are_removed(tmp_path):
    (tmp_path / f"{safe_write.TEMP_PREFIX}abc{safe_write.TEMP_SUFFIX}").write_bytes(b"half")
    (tmp_path / "keep.png").write_bytes(b"whole")
    assert [p.name for p in safe_write.remove_stale_temporaries(tmp_path)] == [".handrefiner-abc.tmp"]
    assert [p.name for p in tmp_path.iterdir()] == ["keep.png"]
