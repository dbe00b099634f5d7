"""The training dataset folder: the official HandRefiner loader's layout, accepted as is.

    DIR/image/NAME   the RGB image (any size; resized to the training resolution when read)
    DIR/mask/NAME    the hand mask, 8-bit grey: ≥ 128 hand (regenerated, counted by the loss), < 128 kept
    DIR/pose/NAME    the depth hint as RGB, near bright (255·(1 − 0.8·(d − dmin)/(dmax − dmin)) on each hand,
                     0 background: the project's depth convention), read as value / 255 on 3 channels
    DIR/prompt.json  one JSON object per line: {"jpg": "NAME", "txt": "caption"} (other keys are ignored)

The three images of a sample share one file name (`prepare-data` writes PNGs; the official folders hold JPEGs).
A sample whose files are missing, or whose three images differ in size, is an error naming the file and the fix.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, List, Optional, Tuple

import numpy as np
import torch
from PIL import Image

from lib_handrefiner.safe_write import OutputFolder, png, write_file

IMAGE_DIR, MASK_DIR, HINT_DIR = "image", "mask", "pose"
CAPTIONS_FILE = "prompt.json"


class DatasetFolderError(ValueError):
    """A training folder that cannot be read; the message names the file and the fix."""


@dataclass(frozen=True)
class FolderEntry:
    name: str        # the file name in image/, mask/ and pose/
    caption: str


def read_captions(path: Path) -> List[FolderEntry]:
    """The entries of a JSONL captions file ({"jpg": name, "txt": caption} per line; blank lines skipped)."""
    entries: List[FolderEntry] = []
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except OSError as e:
        raise DatasetFolderError(f"cannot read the captions file {path}: {e.strerror or e}") from None
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
        except json.JSONDecodeError as e:
            raise DatasetFolderError(f"{path} line {number}: not JSON ({e.msg}); each line must be one object "
                                     '{"jpg": "file name", "txt": "caption"}') from None
        if not isinstance(item, dict) or not isinstance(item.get("jpg"), str) or not item["jpg"]:
            raise DatasetFolderError(f'{path} line {number}: needs a "jpg" key with the file name, e.g. '
                                     '{"jpg": "00001.png", "txt": "a hand"}')
        caption = item.get("txt", "")
        if not isinstance(caption, str):
            raise DatasetFolderError(f'{path} line {number}: "txt" must be a string, got {type(caption).__name__}')
        entries.append(FolderEntry(item["jpg"], caption))
    return entries


def write_captions(path: Path, entries: Iterable[FolderEntry]) -> None:
    write_file(path, "".join(json.dumps({"jpg": entry.name, "txt": entry.caption}, ensure_ascii=False) + "\n"
                             for entry in entries))


def list_folder(root: Path, captions: Optional[Path] = None) -> List[FolderEntry]:
    """The samples of a training folder, each checked to have its image, mask and hint."""
    root = Path(root)
    missing_dirs = [d for d in (IMAGE_DIR, MASK_DIR, HINT_DIR) if not (root / d).is_dir()]
    if missing_dirs:
        raise DatasetFolderError(f"{root} is not a training folder: no {', '.join(d + '/' for d in missing_dirs)}; "
                                 "make one with `python -m lib_handrefiner prepare-data`")
    captions = Path(captions) if captions is not None else root / CAPTIONS_FILE
    if not captions.is_file():
        raise DatasetFolderError(f"{root}: no captions file {captions.name}; prepare-data writes one (captions "
                                 "may be empty strings)")
    entries = read_captions(captions)
    if not entries:
        raise DatasetFolderError(f"{captions} lists no samples")
    missing = [str(root / d / e.name) for e in entries for d in (IMAGE_DIR, MASK_DIR, HINT_DIR)
               if not (root / d / e.name).is_file()]
    if missing:
        raise DatasetFolderError(f"{len(missing)} file(s) that {captions.name} names are missing, e.g. "
                                 f"{', '.join(missing[:3])}; remove those lines or add the files")
    return entries


def write_sample(root: Path, name: str, rgb: np.ndarray, mask: np.ndarray, hint: np.ndarray) -> None:
    """One sample's three PNGs: rgb H×W×3, mask H×W (0/255) and hint H×W (the depth levels) as uint8."""
    # Lossless, lightly compressed: the default level spends most of a sample's preparation time on the image.
    # Not flushed one by one (thousands of fsyncs): the captions file, written durably last, lists the samples.
    hint_rgb = np.repeat(hint[:, :, None], 3, axis=2)
    OutputFolder(root).write_set([(f"{IMAGE_DIR}/{name}", png(rgb, compress_level=1)),
                                  (f"{MASK_DIR}/{name}", png(mask, compress_level=1)),
                                  (f"{HINT_DIR}/{name}", png(hint_rgb, compress_level=1))], durable=False)


def _open(path: Path, mode: str) -> Image.Image:
    try:
        with Image.open(path) as image:
            return image.convert(mode)
    except (OSError, ValueError) as e:
        raise DatasetFolderError(f"{path}: not a readable image ({e}); replace or remove it") from None


def read_sample_images(root: Path, name: str, resolution: Optional[int] = None
                       ) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(rgb H×W×3, mask H×W bool, hint H×W×3 uint8) of one sample, resized to resolution² when given (the image
    bicubic; mask and hint nearest, so that they stay binary and on the depth levels)."""
    root = Path(root)
    image, mask, hint = (_open(root / d / name, m) for d, m in ((IMAGE_DIR, "RGB"), (MASK_DIR, "L"),
                                                                  (HINT_DIR, "RGB")))
    if not image.size == mask.size == hint.size:
        raise DatasetFolderError(f"sample {name}: image {image.size}, mask {mask.size} and hint {hint.size} "
                                 "differ in size; they must be pixel-aligned")
    if resolution is not None and image.size != (resolution, resolution):
        size = (resolution, resolution)
        image, mask, hint = (image.resize(size, Image.BICUBIC), mask.resize(size, Image.NEAREST),
                             hint.resize(size, Image.NEAREST))
    return np.asarray(image), np.asarray(mask) >= 128, np.asarray(hint)


def sample_tensors(rgb: np.ndarray, mask: np.ndarray, hint: np.ndarray
                   ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The official loader's tensors: image (3,H,W) in [-1,1], mask (1,H,W) in {0,1}, hint (3,H,W) in [0,1]."""
    image = torch.from_numpy(np.array(rgb)).permute(2, 0, 1).float() / 127.5 - 1.0
    return (image, torch.from_numpy(np.array(mask, dtype=np.float32))[None],
            torch.from_numpy(np.array(hint)).permute(2, 0, 1).float() / 255.0)
