"""Load and convert images of any mode or bit depth to the package's one image type: RGB `uint8` H×W×3.

Every failure is an `ImageError` whose message names the file (or the array) and says what to do.

Images are bounded: `MAX_PIXELS` (4096 × 4096 = 16.8 Mpx, or the HANDREFINER_MAX_PIXELS environment variable) is
the one limit of the command line, the REST API and the WebUI; a larger image is an `ImageTooLarge` error read
from its header, before any pixel is decoded (memory per image stays under ~1 GB through the whole pipeline).
"""
from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Optional, Union

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

ImageLike = Union[Image.Image, np.ndarray]

# Transparent pixels are composited over white: the colour a viewer shows them on and the one generated images
# with alpha are usually meant for; dropping alpha would expose arbitrary colours under transparent pixels.
_ALPHA_BACKGROUND = (255, 255, 255)


class ImageError(ValueError):
    """An image could not be read or converted; the message names the file or problem and the fix."""


class ImageTooLarge(ImageError):
    """An image over `max_pixels()` (the API answers 413)."""


MAX_PIXELS = 4096 * 4096
MAX_PIXELS_ENV = "HANDREFINER_MAX_PIXELS"


def max_pixels() -> int:
    """The pixel limit: HANDREFINER_MAX_PIXELS when set to a positive integer, else MAX_PIXELS."""
    value = os.environ.get(MAX_PIXELS_ENV, "").strip()
    return int(value) if value.isdigit() and int(value) > 0 else MAX_PIXELS


def check_pixels(width: int, height: int, what: str = "the image", limit: Optional[int] = None) -> None:
    """ImageTooLarge when a width × height image is over the limit (default: max_pixels())."""
    limit = max_pixels() if limit is None else limit
    if width * height > limit:
        raise ImageTooLarge(f"{what} is {width}×{height} = {width * height:,} pixels, over HandRefiner's limit of "
                            f"{limit:,} ({MAX_PIXELS_ENV}); downscale it first, e.g. to "
                            f"{_fitting(width, height, limit)}")


def _fitting(width: int, height: int, limit: int) -> str:
    scale = (limit / (width * height)) ** 0.5
    return f"{max(1, int(width * scale))}×{max(1, int(height * scale))}"


def load_image(path: Union[str, os.PathLike]) -> np.ndarray:
    """Reads an image file (any format and mode Pillow reads, 16-bit included), applies its EXIF orientation and
    returns RGB uint8 H×W×3. Missing, empty, truncated and non-image files raise `ImageError`."""
    path = Path(path)
    if not path.exists():
        raise ImageError(f"{path}: no such file; check the path")
    if path.is_dir():
        raise ImageError(f"{path}: is a folder, not an image file; pass the image files inside it")
    try:
        data = path.read_bytes()
    except OSError as e:
        raise ImageError(f"{path}: cannot be read ({e.strerror or e}); check its permissions") from e
    if not data:
        raise ImageError(f"{path}: the file is empty (0 bytes); re-save or re-download the image")
    try:
        image = Image.open(io.BytesIO(data))
        check_pixels(*image.size, what=str(path))  # from the header: nothing decoded yet
        image.load()  # decodes now, so a truncated file fails here and not later in the pipeline
    except ImageError:
        raise
    except Image.DecompressionBombError as e:
        # Pillow's own guard (over 2 × its MAX_IMAGE_PIXELS) fires while reading the header; nothing was decoded.
        raise ImageTooLarge(f"{path}: the image is too large to decode safely ({e}), over HandRefiner's limit of "
                            f"{max_pixels():,} pixels ({MAX_PIXELS_ENV}); downscale it first") from e
    except UnidentifiedImageError as e:
        raise ImageError(f"{path}: not an image Pillow can read; pass a PNG, JPEG, WebP or another image file") from e
    except (OSError, SyntaxError, ValueError) as e:
        raise ImageError(f"{path}: the image data is damaged or truncated ({e}); re-save or re-download it") from e
    return to_rgb(ImageOps.exif_transpose(image))


def to_rgb(image: ImageLike) -> np.ndarray:
    """Converts a PIL image (RGB, RGBA, L, LA, P, CMYK, 1, I;16, I, F, …) or a numpy array (H×W, H×W×1/3/4; uint8,
    uint16, bool, or float in [0, 1]) to a C-contiguous RGB uint8 H×W×3 array."""
    if isinstance(image, Image.Image):
        check_pixels(*image.size)
        return _pil_to_rgb(image)
    if isinstance(image, np.ndarray):
        if image.ndim >= 2:
            check_pixels(image.shape[1], image.shape[0], what="the image array")
        return _array_to_rgb(image)
    raise ImageError(f"expected a PIL image or a numpy array, got {type(image).__name__}; load the file with "
                     f"lib_handrefiner.imageio.load_image")


def _pil_to_rgb(image: Image.Image) -> np.ndarray:
    if image.width == 0 or image.height == 0:
        raise ImageError(f"the image is empty ({image.width}×{image.height}); pass an image with pixels")
    if image.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I", "F"):
        # Pillow's convert("RGB") clips these wide modes at 255 instead of scaling them; scale explicitly.
        return _array_to_rgb(_wide_mode_array(image))
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        image = image.convert("RGBA")
        background = Image.new("RGBA", image.size, _ALPHA_BACKGROUND + (255,))
        image = Image.alpha_composite(background, image)
    return np.ascontiguousarray(np.asarray(image.convert("RGB"), dtype=np.uint8))


def _wide_mode_array(image: Image.Image) -> np.ndarray:
    """A 16/32-bit integer or float single-channel image as uint16 (integers) or float32 in [0, 1] (floats)."""
    array = np.asarray(image)
    if image.mode == "F":
        return array.astype(np.float32)
    # "I" holds 16-bit PNGs on some Pillow versions; wider values than 16 bits cannot be meant as pixel levels.
    return np.clip(array.astype(np.int64), 0, 65535).astype(np.uint16)


def _array_to_rgb(array: np.ndarray) -> np.ndarray:
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[:, :, 0]
    if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[2] not in (3, 4)):
        raise ImageError(f"an image array must be H×W, H×W×1, H×W×3 or H×W×4, got shape {array.shape}")
    if array.shape[0] == 0 or array.shape[1] == 0:
        raise ImageError(f"the image array is empty (shape {array.shape}); pass an image with pixels")
    levels = _to_uint8_levels(array)
    if levels.ndim == 2:
        levels = np.repeat(levels[:, :, None], 3, axis=2)
    elif levels.shape[2] == 4:
        alpha = levels[:, :, 3:4].astype(np.float32) / 255.0
        background = np.array(_ALPHA_BACKGROUND, dtype=np.float32)
        levels = np.round(levels[:, :, :3] * alpha + background * (1.0 - alpha)).astype(np.uint8)
    return np.ascontiguousarray(levels)


def _to_uint8_levels(array: np.ndarray) -> np.ndarray:
    if array.dtype == np.uint8:
        return array
    if array.dtype == np.bool_:
        return array.astype(np.uint8) * 255
    if array.dtype == np.uint16:
        # 65535 / 257 = 255 exactly: full range maps to full range.
        return np.round(array.astype(np.float32) / 257.0).astype(np.uint8)
    if np.issubdtype(array.dtype, np.floating):
        if not np.all(np.isfinite(array)):
            raise ImageError("the image array holds NaN or infinite values; pass finite values in [0, 1]")
        return np.round(np.clip(array, 0.0, 1.0) * 255.0).astype(np.uint8)
    raise ImageError(f"unsupported image array dtype {array.dtype}; pass uint8, uint16, bool or float in [0, 1]")
