"""The one error shape of the service, `ErrorResponse`: `{"detail": [{"type", "loc", "msg"}]}` — FastAPI's
422 shape, used for every status (401, 403, 404, 405, 408, 413, 415, 422, 500, 503), so a client parses
errors one way. Raise `ApiError` in routes and dependencies; middleware that answers before the app does
uses `error_body`; `error_responses` documents the codes of a route in the OpenAPI document.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from fastapi import HTTPException

from app.schemas import ErrorResponse

# The `type` of an error answered with this status when the raiser gave none.
DEFAULT_TYPES = {400: "bad_request", 401: "missing_api_key", 403: "invalid_api_key", 404: "not_found",
                 405: "method_not_allowed", 408: "body_timeout", 413: "body_too_large",
                 415: "unsupported_media_type", 422: "value_error", 500: "internal_error", 503: "no_bundle"}

_DESCRIPTIONS = {
    401: "No X-API-Key header",
    403: "The X-API-Key is not one of XREC_API_KEYS",
    404: "No such item",
    408: "The request body did not arrive within XREC_BODY_TIMEOUT_S",
    413: "The request body is over XREC_MAX_BODY_BYTES (batch routes: XREC_MAX_BATCH_BODY_BYTES)",
    415: "The body was not sent as JSON (Content-Type: application/json)",
    422: "Invalid input: `loc` is the field's path. Also input only the loaded bundle can judge (an unknown "
         "platform, an item of another platform, a catalog item that is not there)",
    503: "No bundle is loaded (see /readyz)",
}


class ApiError(HTTPException):
    """An HTTP error with its `type` and `loc` (the exception handler in app/main.py writes the body)."""

    def __init__(self, status_code: int, msg: str, loc: list[str | int] | None = None, type_: str | None = None,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(status_code, msg, headers=headers)
        self.type = type_ or DEFAULT_TYPES.get(status_code, "error")
        self.loc: list[str | int] = loc or []


def error_content(status: int, msg: str, loc: list[str | int] | None = None, type_: str | None = None
                  ) -> dict[str, Any]:
    return {"detail": [{"type": type_ or DEFAULT_TYPES.get(status, "error"), "loc": loc or [], "msg": msg}]}


def error_body(status: int, msg: str, loc: list[str | int] | None = None, type_: str | None = None) -> bytes:
    return json.dumps(error_content(status, msg, loc, type_)).encode()


def error_responses(*codes: int, descriptions: dict[int, str] | None = None) -> dict[int | str, dict[str, Any]]:
    """OpenAPI `responses` for these error statuses, each with the ErrorResponse model; `descriptions`
    replace the default wording of a code for one route."""
    wording = {**_DESCRIPTIONS, **(descriptions or {})}
    return {code: {"model": ErrorResponse, "description": wording[code]} for code in codes}


# Most /v1 routes: a JSON body, a key, the loaded bundle.
BODY_ERRORS = (408, 413, 415, 422)
AUTH_ERRORS = (401, 403)

_ABSOLUTE_PATH = re.compile(r"(?<![\w.~-])/(?:[^\s/:'\"]+/)*([^\s/:'\"]+)")


def without_server_paths(msg: str, *folders: Path) -> str:
    """The message with no absolute server path in it: a path inside one of `folders` becomes relative to
    it (`items.parquet`), the folder itself its name, and any other absolute path its last component."""
    for folder in folders:
        for form in dict.fromkeys((str(folder.resolve()), str(folder.absolute()), str(folder))):
            if form.startswith("/"):
                msg = msg.replace(form + "/", "").replace(form, folder.name or "/")
    return _ABSOLUTE_PATH.sub(lambda m: m.group(1), msg)
