from __future__ import annotations

import os

saved = []   # paths written


def save_image(image, path, basename, seed=None, prompt=None, extension='png', info=None, short_filename=False,
               no_prompt=False, grid=False, pnginfo_section_name='parameters', p=None, existing_info=None,
               forced_filename=None, suffix="", save_to_dirs=None):
    os.makedirs(path, exist_ok=True)
    fullfn = os.path.join(path, f"{len(saved):05}-{seed}{suffix}.{extension}")
    image.save(fullfn)
    saved.append(fullfn)
    return fullfn, None
