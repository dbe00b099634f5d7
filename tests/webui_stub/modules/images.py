from __future__ import annotations

import os

from PIL import Image

saved = []   # paths written


def resize_image(resize_mode, im, width, height, upscaler_name=None):
    """resize_mode 0 ("Just resize") only, with no upscaler: Lanczos to the size."""
    assert resize_mode == 0, "the stand-in only has 'Just resize'"
    return im if im.size == (width, height) else im.resize((width, height), resample=Image.LANCZOS)


def flatten(img, bgcolor):
    if img.mode == "RGBA":
        background = Image.new('RGBA', img.size, bgcolor)
        background.paste(img, mask=img)
        img = background
    return img.convert('RGB')


def save_image(image, path, basename, seed=None, prompt=None, extension='png', info=None, short_filename=False,
               no_prompt=False, grid=False, pnginfo_section_name='parameters', p=None, existing_info=None,
               forced_filename=None, suffix="", save_to_dirs=None):
    os.makedirs(path, exist_ok=True)
    fullfn = os.path.join(path, f"{len(saved):05}-{seed}{suffix}.{extension}")
    image.save(fullfn)
    saved.append(fullfn)
    return fullfn, None
