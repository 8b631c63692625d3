"""The error envelope of API.md for every error: ``{"error": {"code", "message", "details"}}``."""

from __future__ import annotations

import logging
from http import HTTPStatus
from typing import Any

import redis
import sqlalchemy.exc
from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from portal.services.errors import DomainError

logger = logging.getLogger("portal.api")

_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    413: "payload_too_large",
    415: "unsupported_media_type",
    422: "invalid_input",
    429: "rate_limited",
    503: "unavailable",
}


def error_response(
    status: int, code: str, message: str, details: Any = None, headers: dict[str, str] | None = None
) -> JSONResponse:
    body = {"error": {"code": code, "message": message, "details": jsonable_encoder(details)}}
    return JSONResponse(body, status_code=status, headers=headers)


async def _domain_error(_: Request, error: Exception) -> JSONResponse:
    assert isinstance(error, DomainError)
    headers = error.headers
    if error.status_code == 401:
        headers = {**(headers or {}), "WWW-Authenticate": "Bearer"}
    return error_response(error.status_code, error.code, error.message, error.details, headers)


async def _http_error(_: Request, error: Exception) -> JSONResponse:
    assert isinstance(error, StarletteHTTPException)
    status = error.status_code
    message = error.detail if isinstance(error.detail, str) else HTTPStatus(status).phrase
    return error_response(
        status, _CODES.get(status, "error"), message, headers=getattr(error, "headers", None)
    )


async def _validation_error(_: Request, error: Exception) -> JSONResponse:
    assert isinstance(error, RequestValidationError)
    # Keep what tells the caller which field is wrong; drop the echoed input, which may hold a secret.
    fields = [
        {
            "field": ".".join(str(part) for part in issue["loc"]),
            "message": issue["msg"],
            "type": issue["type"],
        }
        for issue in error.errors()
    ]
    first = fields[0] if fields else {"field": "body", "message": "invalid"}
    return error_response(422, "invalid_input", f"{first['field']}: {first['message']}", fields)


async def _database_unavailable(_: Request, error: Exception) -> JSONResponse:
    # The database went away, (SQLite) stayed locked past the busy timeout, or no pooled connection came free
    # in time (sqlalchemy.exc.TimeoutError): nothing was changed. A handler
    # of its own, not the catch-all's: Starlette re-raises what reaches that one, and logs it as a 500.
    logger.error("the database did not answer: %s", str(error).splitlines()[0][:300])
    return error_response(
        503,
        "unavailable",
        "The portal's database is busy or unreachable; try again shortly.",
        headers={"Retry-After": "1"},
    )


async def _unexpected_error(_: Request, error: Exception) -> JSONResponse:
    if isinstance(error, redis.ConnectionError | redis.TimeoutError):
        logger.error("the cache is unreachable: %s", error)
        return error_response(503, "unavailable", "The portal's cache is unreachable; try again shortly.")
    logger.exception("unhandled error", exc_info=error)
    return error_response(500, "internal_error", "Something went wrong on our side; it has been logged.")


def install_error_handlers(api: FastAPI) -> None:
    api.add_exception_handler(DomainError, _domain_error)
    api.add_exception_handler(StarletteHTTPException, _http_error)
    api.add_exception_handler(RequestValidationError, _validation_error)
    api.add_exception_handler(sqlalchemy.exc.OperationalError, _database_unavailable)
    api.add_exception_handler(sqlalchemy.exc.TimeoutError, _database_unavailable)
    api.add_exception_handler(Exception, _unexpected_error)
