"""imageio: every input mode to RGB uint8, and bad files rejected with a message naming the file."""
from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFile

from lib_handrefiner.imageio import ImageError, load_image, to_rgb

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def _gradient(h=6, w=8) -> np.ndarray:
    y, x = np.mgrid[0:h, 0:w]
    return np.stack([x * 30, y * 40, (x + y) * 10], axis=2).astype(np.uint8)


def _assert_rgb(a: np.ndarray, shape=(6, 8, 3)):
    assert a.dtype == np.uint8 and a.shape == shape and a.flags.c_contiguous


@pytest.mark.parametrize("mode", ["RGB", "L", "CMYK", "P", "1", "YCbCr", "HSV"])
def test_pil_modes_convert_to_rgb(mode):
    rgb = _gradient()
    image = Image.fromarray(rgb).convert(mode)
    out = to_rgb(image)
    _assert_rgb(out)
    if mode == "RGB":
        assert np.array_equal(out, rgb)
    if mode == "L":
        assert np.array_equal(out[:, :, 0], np.asarray(image)) and np.array_equal(out[:, :, 0], out[:, :, 2])


def test_rgba_composites_over_white():
    rgba = np.zeros((6, 8, 4), np.uint8)
    rgba[:, :, 0] = 200
    rgba[:, :4, 3] = 255  # left half opaque red-ish, right half fully transparent
    for source in (Image.fromarray(rgba, "RGBA"), rgba):
        out = to_rgb(source)
        _assert_rgb(out)
        assert out[0, 0].tolist() == [200, 0, 0]
        assert out[0, 7].tolist() == [255, 255, 255]


def test_la_and_palette_with_transparency():
    la = Image.fromarray(np.stack([np.full((6, 8), 10, np.uint8), np.zeros((6, 8), np.uint8)], 2), "LA")
    assert to_rgb(la)[0, 0].tolist() == [255, 255, 255]
    p = Image.new("P", (8, 6), 0)
    p.putpalette([10, 20, 30] + [0, 0, 0] * 255)
    p.info["transparency"] = 0
    assert to_rgb(p)[0, 0].tolist() == [255, 255, 255]
    p.info.pop("transparency")
    assert to_rgb(p)[0, 0].tolist() == [10, 20, 30]


def test_sixteen_bit_png_scales_to_full_range(tmp_path):
    levels = np.array([[0, 257, 32896, 65535]], dtype=np.uint16)
    path = tmp_path / "deep.png"
    Image.fromarray(levels).save(path)
    assert Image.open(path).mode.startswith("I")
    out = load_image(path)
    assert out.shape == (1, 4, 3)
    assert out[0, :, 0].tolist() == [0, 1, 128, 255]


def test_wide_pil_modes():
    i32 = Image.fromarray(np.array([[0, 65535, 70000]], dtype=np.int32), "I")
    assert to_rgb(i32)[0, :, 1].tolist() == [0, 255, 255]
    f = Image.fromarray(np.array([[0.0, 0.5, 1.0]], dtype=np.float32), "F")
    assert to_rgb(f)[0, :, 2].tolist() == [0, 128, 255]


@pytest.mark.parametrize("array,expected", [
    (np.full((6, 8), 7, np.uint8), 7),
    (np.full((6, 8, 1), 9, np.uint8), 9),
    (np.full((6, 8, 3), 65535, np.uint16), 255),
    (np.full((6, 8), 0.5, np.float32), 128),
    (np.ones((6, 8), bool), 255),
])
def test_numpy_inputs(array, expected):
    out = to_rgb(array)
    _assert_rgb(out)
    assert np.all(out == expected)


@pytest.mark.parametrize("bad,words", [
    (np.zeros((6, 8, 2), np.uint8), "shape"),
    (np.zeros((0, 8, 3), np.uint8), "empty"),
    (np.zeros((6, 8, 3), np.int64), "dtype"),
    (np.full((6, 8, 3), np.nan, np.float32), "NaN"),
    ("not an image", "PIL image or a numpy array"),
])
def test_bad_arrays_raise_clear_errors(bad, words):
    with pytest.raises(ImageError, match=words):
        to_rgb(bad)


def test_load_shipped_example():
    out = load_image(EXAMPLES / "malformed_1.jpg")
    assert out.shape == (512, 512, 3) and out.dtype == np.uint8 and out.std() > 10


def test_exif_orientation_applied(tmp_path):
    image = Image.fromarray(_gradient(4, 10))
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90° clockwise to display"
    path = tmp_path / "rotated.jpg"
    image.save(path, exif=exif.tobytes())
    assert load_image(path).shape == (10, 4, 3)


def test_missing_file(tmp_path):
    path = tmp_path / "nope.png"
    with pytest.raises(ImageError, match=r"nope\.png.*no such file"):
        load_image(path)


def test_folder_is_not_an_image(tmp_path):
    with pytest.raises(ImageError, match="folder"):
        load_image(tmp_path)


def test_empty_file(tmp_path):
    path = tmp_path / "empty.jpg"
    path.write_bytes(b"")
    with pytest.raises(ImageError, match=r"empty\.jpg.*empty \(0 bytes\)"):
        load_image(path)


def test_not_an_image(tmp_path):
    path = tmp_path / "notes.png"
    path.write_text("hello, not pixels")
    with pytest.raises(ImageError, match=r"notes\.png.*not an image"):
        load_image(path)


@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
def test_truncated_file(tmp_path, monkeypatch, fmt):
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", False)  # Pillow's default
    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(buffer, fmt)
    path = tmp_path / f"cut.{fmt.lower()}"
    path.write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])
    with pytest.raises(ImageError, match=r"cut\.\w+.*(damaged|truncated)"):
        load_image(path)


def test_image_over_pillows_pixel_limit_is_an_image_error(tmp_path, monkeypatch):
    # Pillow refuses images over twice MAX_IMAGE_PIXELS (a decompression-bomb guard) with its own exception type.
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    path = tmp_path / "huge.png"
    Image.new("RGB", (64, 64)).save(path)
    with pytest.raises(ImageError, match=r"huge\.png.*too large.*HandRefiner.s limit of 16,777,216 pixels.*downscale"):
        load_image(path)
