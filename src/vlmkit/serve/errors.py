"""OpenAI-style errors: `APIError` and the handlers that turn every failure into `{"error": {...}}` JSON.

Client mistakes are 4xx naming the problem (and the offending `param`); only genuine server faults are 500.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

logger = logging.getLogger(__name__)


class APIError(Exception):
    """An error answer: HTTP status, message, OpenAI error type, offending parameter and a short code."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None,
                 type_: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.code = code
        self.type = type_ or ("invalid_request_error" if status < 500 else "server_error")

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


def bad_request(message: str, param: str | None = None, code: str | None = None) -> APIError:
    return APIError(400, message, param, code)


def error_response(e: APIError, extra: dict[str, Any] | None = None) -> JSONResponse:
    headers = {"WWW-Authenticate": "Bearer"} if e.status == 401 else None
    return JSONResponse({**e.body(), **(extra or {})}, status_code=e.status, headers=headers)


def install_error_handlers(app: FastAPI) -> None:
    """APIError -> its JSON; unknown routes/methods -> 404/405 JSON; anything unexpected -> 500 JSON."""

    @app.exception_handler(APIError)
    async def _api_error(_: Request, e: APIError) -> JSONResponse:
        return error_response(e)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_: Request, e: StarletteHTTPException) -> JSONResponse:
        return error_response(APIError(e.status_code, str(e.detail), code="not_found" if e.status_code == 404
                                       else None))

    @app.exception_handler(RequestValidationError)
    async def _validation_error(_: Request, e: RequestValidationError) -> JSONResponse:
        return error_response(bad_request(f"invalid request: {e.errors()}"))

    @app.exception_handler(Exception)
    async def _server_error(_: Request, e: Exception) -> JSONResponse:
        logger.exception("unexpected server error")
        return error_response(APIError(500, f"internal server error ({type(e).__name__})"))
