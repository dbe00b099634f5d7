"""The request and response models of `/handrefiner/refine`: every setting plus the image, checked as JSON
types (no silent coercion)."""
from __future__ import annotations

import math
from typing import Any, Dict, List, Optional, Tuple

from pydantic import BaseModel, Field, validator

from lib_handrefiner.settings import HandRefinerArgs, field_names

MAX_TEXT_CHARS = 10_000  # prompts and names: CLIP reads 77 tokens; megabytes would only cost tokenizer time


_SCALAR_TYPES = {bool: "a boolean", int: "an integer", float: "a number", str: "a string"}


class RefineRequest(HandRefinerArgs):
    """Every HandRefiner setting (same names and defaults as the UI and infotext), plus the image and what to
    return. `prompt`/`negative_prompt` are the hands' prompts; `enabled` is accepted and ignored here."""

    image: str = Field(..., description="Base64 PNG, JPEG or WebP; a data:image/...;base64, prefix is accepted.")
    return_depth: bool = Field(False, description="Also return the depth map (base64 PNG).")
    return_mask: bool = Field(False, description="Also return the inpainting mask (base64 PNG).")

    @validator("*", pre=True)
    def _json_types(cls, value: Any, field: Any) -> Any:
        # JSON clients get no silent coercion ("30" → 30, 2.5 → 2, 1 → True): a mistyped field is an error.
        if field.name == "adaptive_strengths":
            return _check_numbers(value, "a list of numbers")
        if field.name == "boxes":
            if not isinstance(value, list):
                raise TypeError(f"must be a list of [x0, y0, x1, y1] boxes, got {type(value).__name__}")
            return [_check_numbers(b, "a box [x0, y0, x1, y1] of 4 numbers", length=4) for b in value]
        expected = _scalar_type(field.outer_type_)
        if expected is str and field.name != "image" and isinstance(value, str) and len(value) > MAX_TEXT_CHARS:
            raise ValueError(f"is {len(value)} characters long; at most {MAX_TEXT_CHARS}")
        return value if expected is None else _check_scalar(value, expected)

    def settings(self) -> HandRefinerArgs:
        return HandRefinerArgs(**self.dict(include=set(field_names())))


def _scalar_type(annotation: Any) -> Optional[type]:
    # Constrained fields (Field(ge=...)) have pydantic subclasses of int/float as their type.
    for kind in _SCALAR_TYPES:
        if isinstance(annotation, type) and issubclass(annotation, kind):
            return kind
    return None


def _check_scalar(value: Any, expected: type) -> Any:
    ok = (isinstance(value, bool) if expected is bool else
          isinstance(value, str) if expected is str else
          isinstance(value, (int, float)) and not isinstance(value, bool))
    if not ok:
        raise TypeError(f"must be {_SCALAR_TYPES[expected]}, got {type(value).__name__} {value!r:.60}")
    if expected in (int, float) and not math.isfinite(value):
        raise TypeError(f"must be a finite number, got {value!r}")
    if expected is int and isinstance(value, float):
        if not value.is_integer():
            raise TypeError(f"must be an integer, got {value!r}")
        return int(value)
    return value


def _check_numbers(value: Any, what: str, length: Optional[int] = None) -> Any:
    if not isinstance(value, (list, tuple)) or (length is not None and len(value) != length):
        raise TypeError(f"must be {what}, got {value!r:.80}")
    for item in value:
        _check_scalar(item, float)
    return value


class TriedStrength(BaseModel):
    strength: float
    mpjpe: Optional[float] = Field(None, description="2D MPJPE (px); null when no hand was found in the sample.")


class HandInfo(BaseModel):
    box: Tuple[int, int, int, int] = Field(..., description="Mask box [x0, y0, x1, y1] in pixels, x1/y1 exclusive.")
    handedness: Optional[str] = Field(None, description="'left' / 'right' (the person's own); None: no hand found "
                                                        "in a user box.")
    score: Optional[float] = Field(None, description="Detection confidence.")
    refined: bool
    strength: Optional[float] = Field(None, description="Control strength kept.")
    mpjpe: Optional[float] = Field(None, description="2D MPJPE (px) of the kept sample (adaptive mode).")
    tried: List[TriedStrength] = Field([], description="The strengths sampled (adaptive mode), in order, each with "
                                                       "its MPJPE.")
    mesh: Optional[str] = Field(None, description="The mesh model its depth guide was rendered from ('graphormer' or "
                                                  "'landmarks'); None: no mesh (no hand found in a user box).")
    found_by: Optional[str] = Field(None, description="How the hand was found: 'palm', 'pose', 'low', 'flip', 'edge', "
                                                      "'tile' (the hand search's passes) or 'user_box' (the landmark "
                                                      "model alone on a box you gave, where no palm was found).")


class RefineResponse(BaseModel):
    image: str = Field(..., description="The refined image, base64 PNG (unchanged when no hand was refined).")
    width: int
    height: int
    depth: Optional[str] = None
    mask: Optional[str] = None
    hands: List[HandInfo]
    seed: int
    infotext: str
    message: str
    timings_ms: Dict[str, float]
    unet_calls: int = Field(0, description="Forward calls of the UNet in the hand passes (each with the ControlNet; "
                                           "a call may hold both CFG branches): the sampling cost, independent of "
                                           "the machine's load. 0 when nothing was sampled.")
