"""The settings model on pydantic 1 (AUTOMATIC1111, reForge) and pydantic 2 (the Forge 2 backend): the base class
with the model's configuration, the validator decorator, and what the codecs read of a field (`FieldSpec`), so that
nothing else touches either version's internals."""
from __future__ import annotations

import typing
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Tuple, Type

import pydantic
from pydantic import BaseModel

PYDANTIC_V2 = int(pydantic.VERSION.split(".")[0]) >= 2

if PYDANTIC_V2:
    from pydantic import ConfigDict, field_validator

    class SettingsModel(BaseModel):
        model_config = ConfigDict(extra="forbid", validate_assignment=True)

    def check(*fields: str) -> Callable[[Callable], Any]:
        """A validator of whole field values (after the field's own validation), on either pydantic."""
        return field_validator(*fields)

    def _model_fields(model: Type[BaseModel]) -> Dict[str, Any]:
        return dict(model.model_fields)

    def _info(field: Any) -> Tuple[Any, Optional[str], Optional[str], Optional[float], Optional[float]]:
        bounds = {name: getattr(m, name) for m in field.metadata for name in ("ge", "le") if hasattr(m, name)}
        return field.default, field.title, field.description, bounds.get("ge"), bounds.get("le")

    def as_dict(model: BaseModel) -> Dict[str, Any]:
        return model.model_dump()
else:
    from pydantic import validator

    class SettingsModel(BaseModel):  # type: ignore[no-redef]
        class Config:
            extra = "forbid"
            validate_assignment = True

    def check(*fields: str) -> Callable[[Callable], Any]:  # type: ignore[misc]
        """A validator of whole field values (after the field's own validation), on either pydantic."""
        return validator(*fields, allow_reuse=True)

    def _model_fields(model: Type[BaseModel]) -> Dict[str, Any]:
        return dict(model.__fields__)

    def _info(field: Any) -> Tuple[Any, Optional[str], Optional[str], Optional[float], Optional[float]]:
        info = field.field_info
        return field.default, info.title, info.description, info.ge, info.le

    def as_dict(model: BaseModel) -> Dict[str, Any]:
        return model.dict()


def replace(model: BaseModel, **changes: Any) -> Any:
    """A copy of `model` with `changes`, validated (pydantic's own copy(update=…) does not validate)."""
    return type(model)(**{**as_dict(model), **changes})


@dataclass(frozen=True)
class FieldSpec:
    """What every surface needs of one field, whichever pydantic holds it."""
    name: str
    title: str                      # the infotext key ("HandRefiner strength")
    description: str
    default: Any
    kind: str                       # "bool", "int", "float", "str", "choice", "floats" (a list), "boxes"
    choices: Tuple[str, ...] = ()   # a Literal's values
    ge: Optional[float] = None
    le: Optional[float] = None

    @property
    def label(self) -> str:
        """The title without "HandRefiner ", first letter upper-cased ("ControlNet", "CFG scale")."""
        title = self.title.replace("HandRefiner ", "", 1)
        return title[:1].upper() + title[1:]


def _kind(annotation: Any) -> Tuple[str, Tuple[str, ...]]:
    origin, params = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is typing.Literal:
        return "choice", tuple(params)
    if origin in (list, List):
        return ("boxes" if typing.get_origin(params[0]) in (tuple, Tuple) else "floats"), ()
    for kind in (bool, int, float, str):
        if annotation is kind:
            return kind.__name__, ()
    raise TypeError(f"settings field type {annotation!r} has no codec")


def field_specs(model: Type[BaseModel]) -> Dict[str, FieldSpec]:
    """name → FieldSpec, in the model's field order."""
    hints = typing.get_type_hints(model)
    specs = {}
    for name, field in _model_fields(model).items():
        default, title, description, ge, le = _info(field)
        kind, choices = _kind(hints[name])
        specs[name] = FieldSpec(name, title or name, description or "", default, kind, choices, ge, le)
    return specs
