"""The JSON envelope of non-OAuth endpoints, request ids, and error handling.

Every response carries ``error.log_id`` and ``X-Request-Id``; the same id is stored
on an upload and carried into the worker's log lines, so one id follows a sound
from the request through every stage.
"""

from __future__ import annotations

import logging
import secrets
import time
from typing import Any

from flask import Flask, Response, g, jsonify, request
from werkzeug.exceptions import HTTPException, InternalServerError
from werkzeug.wrappers import Response as BaseResponse

from soundkit.logs import current_log_id

log = logging.getLogger(__name__)

#: error code → HTTP status, from API.md.
ERROR_STATUS: dict[str, int] = {
    "ok": 200,
    "invalid_params": 400,
    "access_token_invalid": 401,
    "scope_not_authorized": 403,
    "not_found": 404,
    "method_not_allowed": 405,
    "file_too_large": 413,
    "unsupported_media_type": 415,
    "rate_limit_exceeded": 429,
    "internal_error": 500,
    "service_unavailable": 503,
}


class ApiError(Exception):
    """Raised anywhere in a Sound Kit view to answer with a specific error."""

    def __init__(self, code: str, message: str, *, data: dict[str, Any] | None = None,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.data = data or {}
        self.headers = headers or {}


def new_log_id() -> str:
    """Sortable request id: UTC time to the second, then randomness."""
    return time.strftime("%Y%m%d%H%M%S", time.gmtime()) + secrets.token_hex(8).upper()


def log_id() -> str:
    found: str = g.get("log_id") or new_log_id()
    return found


def envelope(data: dict[str, Any], code: str = "ok", message: str = "",
             status: int | None = None) -> Response:
    response = jsonify({"data": data,
                        "error": {"code": code, "message": message, "log_id": log_id()}})
    response.status_code = status or ERROR_STATUS[code]
    return response


def _handle_api_error(error: ApiError) -> Response:
    response = envelope(error.data, error.code, error.message)
    response.headers.update(error.headers)
    return response


def _http_code(status: int) -> str:
    for code, value in ERROR_STATUS.items():
        if value == status:
            return code
    return "invalid_params" if status < 500 else "internal_error"


def _wants_envelope() -> bool:
    """Sound Kit JSON endpoints; OAuth answers per RFC 6749 and authorize is a page."""
    return request.path.startswith("/v2/") and not request.path.startswith(
        ("/v2/oauth/", "/v2/auth/"))


def _handle_http_error(error: HTTPException) -> BaseResponse:
    if not _wants_envelope():
        return error.get_response()
    status = error.code or 500
    return envelope({}, _http_code(status), error.description or "", status=status)


def _handle_unexpected(error: Exception) -> BaseResponse:
    log.exception("unhandled error")
    if not _wants_envelope():
        return InternalServerError().get_response()
    return envelope({}, "internal_error", "internal error")


def init_app(app: Flask) -> None:
    @app.before_request
    def _assign_log_id() -> None:
        g.log_id = new_log_id()
        g.log_id_token = current_log_id.set(g.log_id)

    @app.after_request
    def _expose_log_id(response: Response) -> Response:
        response.headers["X-Request-Id"] = log_id()
        return response

    @app.teardown_request
    def _forget_log_id(_error: BaseException | None) -> None:
        # A worker thread serves many requests: lines logged between two of them (and
        # a test that calls the app in its own thread) must not carry this one's id.
        token = g.pop("log_id_token", None)
        if token is not None:
            current_log_id.reset(token)

    app.register_error_handler(ApiError, _handle_api_error)
    app.register_error_handler(HTTPException, _handle_http_error)
    app.register_error_handler(Exception, _handle_unexpected)
