"""JSON that every parser reads: no NaN or Infinity, which Python writes by default and the JSON standard (and
the parsers of most other languages) reject. A value that is not a finite number — an MPJPE of a hand that was
not found again is inf — is written as null."""
from __future__ import annotations

import json
import math
from typing import Any, Optional


def finite_or_none(value: Any) -> Optional[float]:
    return float(value) if value is not None and math.isfinite(value) else None


def clean(value: Any) -> Any:
    """`value` with every non-finite float (also inside lists, tuples and dicts) replaced by None."""
    if isinstance(value, float):
        return finite_or_none(value)
    if isinstance(value, (list, tuple)):
        return [clean(v) for v in value]
    if isinstance(value, dict):
        return {k: clean(v) for k, v in value.items()}
    return value


def dumps(value: Any, **kwargs: Any) -> str:
    return json.dumps(clean(value), allow_nan=False, **kwargs)
