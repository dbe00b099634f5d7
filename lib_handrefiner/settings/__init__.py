"""HandRefiner's settings: one model (model.py, fields and validators only) and one codec per surface.

- model: `HandRefinerArgs`; compat: pydantic 1 and 2; fields: `FIELDS` (name → FieldSpec), `field_names()`
- infotext: "HandRefiner …" generation parameters ↔ settings
- widget: a field's value ↔ its widget's (WebUI accordion, editor)
- script_args: the always-on script's args (widgets, `alwayson_scripts`) → settings
- cli: `--set NAME=VALUE`
- the REST API's body is the model itself (api.RefineRequest)
- boxes, text: box text and value text, read in one place; errors: a ValidationError as one line
- groups: the accordion's groups, the settings section's fields, the XYZ axes
"""
from lib_handrefiner.settings.boxes import format_boxes, parse_boxes
from lib_handrefiner.settings.cli import parse_setting
from lib_handrefiner.settings.compat import PYDANTIC_V2, FieldSpec, as_dict, replace
from lib_handrefiner.settings.errors import describe_error, unknown_setting_message
from lib_handrefiner.settings.fields import FIELDS, field_names
from lib_handrefiner.settings.groups import (
           BOXES_GROUP,
           EDITOR_GROUP,
           GROUPS,
           OTHER_GROUP,
           SETTING_FIELDS,
           XYZ_FIELDS,
           layout,
           layout_fields,
)
from lib_handrefiner.settings.infotext import (
    HAND_BOXES_INFOTEXT_KEY,
    MESHES_INFOTEXT_KEY,
    from_infotext,
    to_infotext,
)
from lib_handrefiner.settings.model import (
           AUTOMATIC_SCHEDULER,
           BUILTIN_SAMPLER,
           DEFAULT_NEGATIVE_PROMPT,
           EXTRA_NEGATIVE_DEFAULT,
           HandRefinerArgs,
)
from lib_handrefiner.settings.script_args import from_script_args
from lib_handrefiner.settings.text import parse_bool, parse_floats
from lib_handrefiner.settings.widget import CURRENT_MODEL, LIST_FIELDS, from_widget, to_widget

__all__ = ["AUTOMATIC_SCHEDULER", "BOXES_GROUP", "BUILTIN_SAMPLER", "EDITOR_GROUP", "CURRENT_MODEL",
           "DEFAULT_NEGATIVE_PROMPT",
           "EXTRA_NEGATIVE_DEFAULT", "FIELDS", "FieldSpec", "GROUPS", "HandRefinerArgs", "LIST_FIELDS",
           "HAND_BOXES_INFOTEXT_KEY", "MESHES_INFOTEXT_KEY", "OTHER_GROUP", "PYDANTIC_V2", "SETTING_FIELDS",
           "XYZ_FIELDS", "as_dict",
           "describe_error", "field_names", "format_boxes", "from_infotext", "from_script_args", "from_widget",
           "layout", "layout_fields", "parse_bool", "parse_boxes", "parse_floats", "parse_setting", "replace",
           "to_infotext", "to_widget", "unknown_setting_message"]
