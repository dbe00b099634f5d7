"""Image helpers: resizing ("Just resize" only), flattening transparency, and saving (recorded in `saved`)."""
from __future__ import annotations

import os

from PIL import Image

saved = []   # the paths save_image wrote, in order


def resize_image(resize_mode, im, width, height, upscaler_name=None):
    if resize_mode != 0:
        raise NotImplementedError("only 'Just resize' is in the stand-in")
    return im if im.size == (width, height) else im.resize((width, height), Image.LANCZOS)


def flatten(img, bgcolor):
    """RGB, with an RGBA image's transparent parts on `bgcolor`."""
    if img.mode != "RGBA":
        return img.convert("RGB")
    canvas = Image.new("RGBA", img.size, bgcolor)
    canvas.alpha_composite(img)
    return canvas.convert("RGB")


def save_image(image, path, basename, seed=None, prompt=None, extension='png', info=None, short_filename=False,
               no_prompt=False, grid=False, pnginfo_section_name='parameters', p=None, existing_info=None,
               forced_filename=None, suffix="", save_to_dirs=None):
    os.makedirs(path, exist_ok=True)
    filename = os.path.join(path, f"{len(saved):05}-{seed}{suffix}.{extension}")
    image.save(filename)
    saved.append(filename)
    return filename, None
