"""The one error shape of every `/handrefiner/*` error (`{"detail": [{"loc", "msg", "type"}]}`), the
client error of one field (`InputError`) and an unknown field's message (the closest valid name: settings.errors)."""
from __future__ import annotations

from typing import Any, Sequence

from fastapi import HTTPException
from fastapi.responses import JSONResponse

from lib_handrefiner.settings.errors import unknown_name_message


class InputError(Exception):
    """A client error about one field: HTTP status, the field's location and the message."""

    def __init__(self, field: Sequence[Any], message: str, status: int = 422, kind: str = "value_error") -> None:
        super().__init__(message)
        self.loc = list(field)
        self.message = message
        self.status = status
        self.kind = kind

    def http(self, prefix: Sequence[Any] = ("body",)) -> HTTPException:
        return HTTPException(self.status, detail=[{"loc": [*prefix, *self.loc], "msg": self.message,
                                                   "type": self.kind}])

    def response(self, prefix: Sequence[Any] = ("body",)) -> JSONResponse:
        return error_response(self.status, self.message, [*prefix, *self.loc], self.kind)


def error_response(status: int, msg: str, loc: Sequence[Any] = (), kind: str = "value_error") -> JSONResponse:
    """The shape of every `/handrefiner/*` error: `{"detail": [{"loc", "msg", "type"}]}`."""
    return errors_response(status, [{"loc": list(loc), "msg": msg, "type": kind}])


def errors_response(status: int, errors: Sequence[dict]) -> JSONResponse:
    return JSONResponse(status_code=status, content={"detail": [
        {"loc": list(e.get("loc", [])), "msg": str(e.get("msg", "")), "type": str(e.get("type", "value_error"))}
        for e in errors]})


def http_error_response(error: HTTPException) -> JSONResponse:
    """An HTTPException in the one shape: a list detail is kept (it is already [{loc, msg, type}]), text becomes
    one entry without a location."""
    if isinstance(error.detail, list) and all(isinstance(e, dict) for e in error.detail):
        return errors_response(error.status_code, error.detail)
    kind = "server_error.unavailable" if error.status_code == 503 else f"http_error.{error.status_code}"
    return error_response(error.status_code, str(error.detail), [], kind)


def unknown_field_message(name: Any, valid: Sequence[str]) -> str:
    return unknown_name_message(name, valid, "field")
