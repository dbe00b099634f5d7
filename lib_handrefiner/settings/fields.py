"""The settings model's fields as plain data (`FIELDS`: name → compat.FieldSpec, in field order)."""
from __future__ import annotations

from typing import Dict, List

from lib_handrefiner.settings.compat import FieldSpec, field_specs
from lib_handrefiner.settings.model import HandRefinerArgs

FIELDS: Dict[str, FieldSpec] = field_specs(HandRefinerArgs)


def field_names() -> List[str]:
    """The fields in order: the order of the positional `alwayson_scripts` args."""
    return list(FIELDS)
