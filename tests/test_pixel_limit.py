"""One image pixel limit (imageio.MAX_PIXELS, HANDREFINER_MAX_PIXELS) for the command line, the REST API and the
WebUI's path (perceive), read from the image's header before any pixel is decoded (issue 20)."""
from __future__ import annotations

import base64
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from conftest import api_client
from PIL import Image

from lib_handrefiner import imageio
from lib_handrefiner.cli import main
from lib_handrefiner.imageio import ImageTooLarge, load_image, max_pixels
from lib_handrefiner.perception import perceive

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
LIMIT_WORDS = "over HandRefiner's limit of 16,777,216"


@pytest.fixture(scope="module")
def huge_png(tmp_path_factory) -> Path:
    """A real 10000 × 10000 PNG (100 Mpx, 1-bit: a few hundred KB on disk, 300 MB as RGB)."""
    path = tmp_path_factory.mktemp("huge") / "huge.png"
    Image.new("1", (10_000, 10_000)).save(path)
    assert path.stat().st_size < 2 << 20
    return path


def test_the_limit_and_its_override(monkeypatch):
    assert max_pixels() == imageio.MAX_PIXELS == 4096 * 4096
    monkeypatch.setenv(imageio.MAX_PIXELS_ENV, "1000")
    assert max_pixels() == 1000
    with pytest.raises(ImageTooLarge, match=r"40×40 = 1,600 pixels, over HandRefiner's limit of 1,000 .*to 31×31"):
        imageio.to_rgb(np.zeros((40, 40, 3), np.uint8))
    monkeypatch.setenv(imageio.MAX_PIXELS_ENV, "nonsense")
    assert max_pixels() == imageio.MAX_PIXELS


def test_a_100_megapixel_png_is_refused_from_its_header(huge_png):
    with pytest.raises(ImageTooLarge, match=r"huge\.png is 10000×10000 = 100,000,000 pixels, " + LIMIT_WORDS) as e:
        load_image(huge_png)
    assert "\n" not in str(e.value)
    # Nothing was decoded: the refusal costs the file's bytes, not its 300 MB of pixels.
    peak = subprocess.run([sys.executable, "-c", textwrap.dedent(f"""
        from lib_handrefiner.imageio import ImageTooLarge, load_image
        def hwm():  # VmHWM: ru_maxrss would start from the parent's peak, kept across exec
            return next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM"))
        before = hwm()
        try:
            load_image({str(huge_png)!r})
        except ImageTooLarge:
            print((hwm() - before) / 1024)
        """)], capture_output=True, text=True, check=True)
    assert float(peak.stdout) < 50, peak


def test_the_command_line_reports_it_in_one_line_and_goes_on(tmp_path, huge_png, capsys):
    good = tmp_path / "good.jpg"
    shutil.copy(EXAMPLES / "malformed_1.jpg", good)
    out = tmp_path / "out"
    assert main(["detect", str(huge_png), str(good), "--out", str(out)]) == 1
    errors = [line for line in capsys.readouterr().err.splitlines() if "error:" in line]
    assert len(errors) == 1 and "huge.png" in errors[0] and LIMIT_WORDS in errors[0]
    assert (out / "good.hands.json").is_file() and not (out / "huge.hands.json").exists()


@pytest.fixture(scope="module")
def client(tiny_models):
    from lib_handrefiner.service import StandaloneService

    return api_client(StandaloneService(tiny_models.checkpoint, tiny_models.controlnet))


def test_the_api_answers_413_with_the_same_limit(client, huge_png):
    response = client.post("/handrefiner/refine", json={"image": base64.b64encode(huge_png.read_bytes()).decode()})
    assert response.status_code == 413, response.text
    (error,) = response.json()["detail"]
    assert error["loc"] == ["body", "image"] and LIMIT_WORDS in error["msg"]


def test_the_webui_path_perceives_within_the_limit_only():
    # The WebUI hands perceive() its generated image as an array or a PIL image.
    with pytest.raises(ImageTooLarge, match=LIMIT_WORDS):
        perceive(np.zeros((4097, 4096, 3), np.uint8))
    with pytest.raises(ImageTooLarge, match=LIMIT_WORDS):
        perceive(Image.new("RGB", (8192, 4096)))
