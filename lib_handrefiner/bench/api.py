"""`python -m lib_handrefiner.bench api [--repeats N]`: what the REST API adds around the pipeline.

Median milliseconds over a real FastAPI app (TestClient, tiny models): a request rejected by validation, a
decompression-bomb header, a 512×512 image with no hands, the shipped malformed hand at 2 steps / 64 px crop
(its API overhead = total − run), and image decoding / PNG encoding by size.
"""
from __future__ import annotations

import argparse
import base64
import io
import statistics
import struct
import tempfile
import threading
import zlib
from pathlib import Path
from typing import List

import numpy as np
from PIL import Image

from lib_handrefiner.bench._timing import median_ms

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"




def _b64(array: np.ndarray, fmt: str) -> str:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format=fmt)
    return base64.b64encode(buffer.getvalue()).decode()


def _bomb() -> str:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    png = (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 30000, 30000, 8, 2, 0, 0, 0))
           + chunk(b"IDAT", zlib.compress(b"\0")) + chunk(b"IEND", b""))
    return base64.b64encode(png).decode()


def main(argv: List[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m lib_handrefiner.bench api", description=__doc__)
    parser.add_argument("--repeats", type=int, default=10)
    ns = parser.parse_args(argv)

    import torch
    from fastapi import FastAPI
    from fastapi.testclient import TestClient

    from lib_handrefiner.api import decode_image, encode_png, mount
    from lib_handrefiner.service import StandaloneService
    from lib_handrefiner.tiny import ensure_tiny_models

    torch.set_num_threads(1)
    tiny = ensure_tiny_models(Path(tempfile.mkdtemp(prefix="handrefiner-bench-")))
    app = FastAPI()
    mount(app, StandaloneService(tiny.checkpoint, tiny.controlnet), threading.Lock())
    client = TestClient(app)
    rng = np.random.default_rng(0)
    noise512 = rng.integers(0, 256, (512, 512, 3), dtype=np.uint8)
    noise2048 = rng.integers(0, 256, (2048, 2048, 3), dtype=np.uint8)
    grey = _b64(np.full((512, 512, 3), 128, np.uint8), "PNG")
    hand = base64.b64encode((EXAMPLES / "malformed_1.jpg").read_bytes()).decode()
    post = lambda body: client.post("/handrefiner/refine", json=body)  # noqa: E731 - a one-line helper

    rows = [
        ("rejected: steps out of range", median_ms(lambda: post({"image": grey, "steps": 0}), ns.repeats)),
        ("rejected: 30000x30000 PNG header", median_ms(lambda: post({"image": _bomb()}), ns.repeats)),
        ("512x512 grey, no hands (200)", median_ms(lambda: post({"image": grey}), ns.repeats)),
    ]
    answers = [post({"image": hand, "steps": 2, "crop_resolution": 64, "seed": 1}).json() for _ in range(3)]
    totals = [a["timings_ms"]["total"] for a in answers]
    overheads = [a["timings_ms"]["total"] - a["timings_ms"]["run"] for a in answers]
    rows += [("malformed_1 512x512, 2 steps, 64 px crop: total", statistics.median(totals)),
             ("  of which API (decode, checks, encode)", statistics.median(overheads))]
    for name, array in (("512x512", noise512), ("2048x2048", noise2048)):
        for fmt in ("JPEG", "PNG"):
            text = _b64(array, fmt)
            rows.append((f"decode {name} {fmt} ({len(text) // 1024} KiB base64)",
                         median_ms(lambda: decode_image(text), ns.repeats)))
        rows.append((f"encode {name} PNG", median_ms(lambda: encode_png(array), ns.repeats)))

    print(f"REST API, median ms ({ns.repeats} runs, torch threads 1, tiny models)")
    for label, value in rows:
        print(f"{label:<52} {value:9.1f}")
    return 0
