"""Property-based fuzz of POST /handrefiner/refine: generated payloads never cause a server error.

Nothing is stubbed: the real app, the real pipeline with tiny models. Most payloads carry at least one bad field
(wrong type, out of range, NaN, unknown key, broken base64, non-image, truncated, bomb header, box outside) and
end in a 4xx; valid ones run for real (small images without hands; the shipped malformed hand at 1–2 steps).
"""
from __future__ import annotations

import base64
import collections
import io
import os
import threading
from pathlib import Path

import numpy as np
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image
from test_api import b64_image, png_header_only

from lib_handrefiner.api import mount
from lib_handrefiner.service import StandaloneService
from lib_handrefiner.settings import HandRefinerArgs

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = int(os.environ.get("HANDREFINER_FUZZ_EXAMPLES", "1000"))  # the issue asks for at least 1,000
HAND_B64 = None  # set once in the fixture: the shipped malformed hand, downscaled to keep valid runs cheap


# ---- strategies -----------------------------------------------------------------------------------------------

def text(**kwargs):
    return st.text(st.characters(blacklist_categories=("Cs",)), **kwargs)  # JSON-encodable (no lone surrogates)


junk = st.one_of(st.none(), st.booleans(), st.integers(-10**12, 10**12), st.floats(allow_nan=True, allow_infinity=True),
                 text(max_size=12), st.lists(st.integers(-5, 5), max_size=5),
                 st.dictionaries(text(max_size=4), st.integers(), max_size=2))


@st.composite
def small_image(draw) -> str:
    width, height = draw(st.integers(1, 48)), draw(st.integers(1, 48))
    colour = draw(st.tuples(st.integers(0, 255), st.integers(0, 255), st.integers(0, 255)))
    fmt = draw(st.sampled_from(["PNG", "JPEG", "WEBP"]))
    text = b64_image(np.full((height, width, 3), colour, np.uint8), fmt)
    return draw(st.sampled_from([text, f"data:image/{fmt.lower()};base64,{text}", text[:40] + "\n" + text[40:]]))


@st.composite
def bad_image(draw) -> object:
    raw = draw(st.binary(max_size=64))
    valid = b64_image(np.zeros((8, 8, 3), np.uint8), "PNG")
    return draw(st.sampled_from([
        base64.b64encode(raw).decode(),                                   # random bytes: not an image
        draw(text(max_size=40)),                                       # not base64 (mostly)
        valid[: draw(st.integers(0, len(valid) - 1)) // 4 * 4],           # truncated file
        base64.b64encode(png_header_only(draw(st.integers(4097, 70000)), draw(st.integers(4097, 70000)))).decode(),
        "data:image/png," + valid,                                        # data URL without ;base64
        draw(junk),                                                       # not a string
    ]))


def field_value(name: str):
    """Valid values of a field (as the settings model defines them) or junk."""
    field = HandRefinerArgs.__fields__[name]
    kind = field.type_
    low, high = getattr(kind, "ge", None), getattr(kind, "le", None)
    if name == "boxes":
        coordinate = st.floats(-20, 80, allow_nan=False)
        valid = st.lists(st.tuples(coordinate, coordinate, coordinate, coordinate).map(list), max_size=3)
    elif name == "adaptive_strengths":
        valid = st.lists(st.floats(-0.5, 2.5, allow_nan=False), max_size=3)
    elif getattr(field.outer_type_, "__origin__", None) is not None:      # Literal
        valid = st.sampled_from(list(field.outer_type_.__args__) + ["other"])
    elif issubclass(kind, bool):
        valid = st.booleans()
    elif issubclass(kind, int):
        valid = st.integers((low or 0) - 2, min(high or 100, 4096) + 2)
    elif issubclass(kind, float):
        valid = st.floats((low or 0.0) - 0.5, (high or 1.0) + 0.5, allow_nan=False)
    elif name in ("controlnet", "inpaint_checkpoint"):
        valid = st.sampled_from(["", "tiny-controlnet", "tiny-inpaint", "../x", "/etc/passwd", "a\x00b", "C:\\m",
                                 "missing"])
    else:
        valid = text(max_size=30)
    return st.one_of(valid, valid, junk)


# Fields whose valid values are expensive (steps, resolution, adaptive search) are pinned small on the hand image.
CHEAP_ON_HAND = {"steps": st.integers(1, 2), "crop_resolution": st.just(64), "mode": st.just("fixed"),
                 "crop": st.just(True), "max_hands": st.integers(1, 2)}


@st.composite
def payload(draw) -> object:
    if draw(st.integers(0, 40)) == 0:
        return draw(st.one_of(junk, st.lists(junk, max_size=3)))        # not even an object
    names = draw(st.lists(st.sampled_from(sorted(HandRefinerArgs.__fields__)), max_size=5, unique=True))
    body = {name: draw(field_value(name)) for name in names}
    if draw(st.integers(0, 15)) == 0:
        body[draw(text(min_size=1, max_size=8))] = draw(junk)          # unknown field (or a known one, again)
    for flag in ("return_depth", "return_mask"):
        if draw(st.booleans()):
            body[flag] = draw(st.one_of(st.booleans(), junk))
    kind = draw(st.sampled_from(["small"] * 6 + ["bad"] * 3 + ["hand"] + ["missing"]))
    if kind == "small":
        body["image"] = draw(small_image())
    elif kind == "bad":
        body["image"] = draw(bad_image())
    elif kind == "hand":
        body["image"] = HAND_B64
        body.update({name: draw(strategy) for name, strategy in CHEAP_ON_HAND.items()})
    return body


# ---- the test -------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def client(tiny_models) -> TestClient:
    global HAND_B64
    hand = Image.open(ROOT / "examples" / "malformed_1.jpg").convert("RGB")
    hand.thumbnail((256, 256))
    HAND_B64 = b64_image(np.asarray(hand), "JPEG")
    app = FastAPI()
    mount(app, StandaloneService(tiny_models.checkpoint, tiny_models.controlnet), threading.Lock())
    return TestClient(app, raise_server_exceptions=False)


def test_fuzzed_payloads_never_cause_a_server_error(client):
    statuses: collections.Counter = collections.Counter()
    failures = []

    @settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
              suppress_health_check=list(HealthCheck))
    @given(payload())
    def one(body: object) -> None:
        response = client.post("/handrefiner/refine", json=body)
        statuses[response.status_code] += 1
        if response.status_code >= 500:
            failures.append((body if len(repr(body)) < 400 else repr(body)[:400], response.text[:400]))
        elif response.status_code == 200:
            answer = response.json()
            image = Image.open(io.BytesIO(base64.b64decode(answer["image"])))
            assert image.size == (answer["width"], answer["height"])
        else:
            assert 400 <= response.status_code < 500
            detail = response.json()["detail"]
            assert detail and detail[0]["loc"][0] == "body" and detail[0]["msg"], detail

    one()
    total = sum(statuses.values())
    print(f"\nfuzz: {total} payloads, status counts {dict(sorted(statuses.items()))}")
    assert not failures, failures[:3]
    assert total >= EXAMPLES
    assert statuses[200] >= total // 50 and sum(n for s, n in statuses.items() if 400 <= s < 500) >= total // 2
