"""Errors as ``application/problem+json`` (RFC 9457), rendered in one place.

Clients never see a traceback: unexpected errors answer a 500 with a reference id
that is also in the server log.
"""

from __future__ import annotations

import logging
import uuid
from http import HTTPStatus
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from shared.errors import TailsynthError
from shared.jobs import TRANSIENT_ERRORS

log = logging.getLogger(__name__)
PROBLEM_JSON = "application/problem+json"
#: Seconds a client is told to wait (``Retry-After``) while a backend is unreachable.
RETRY_AFTER_S = 5


def problem(status: int, title: str, detail: str, **extra: Any) -> JSONResponse:
    body = {"type": "about:blank", "title": title, "status": status, "detail": detail, **extra}
    return JSONResponse(body, status_code=status, media_type=PROBLEM_JSON)


def _reason(status: int) -> str:
    """The status's standard reason phrase ("Bad request" for 400), as a problem's title."""
    try:
        return HTTPStatus(status).phrase.capitalize()
    except ValueError:
        return "Error"


def _field_name(loc: tuple[Any, ...]) -> str:
    parts = [str(p) for p in loc if p not in ("body", "query", "path", "header", "form")]
    return ".".join(parts)


def install_problem_handlers(app: FastAPI) -> None:
    @app.exception_handler(TailsynthError)
    async def _domain(_: Request, exc: TailsynthError) -> JSONResponse:
        return problem(exc.status, exc.title, exc.detail, **exc.extra)

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError) -> JSONResponse:
        errors = [
            {"field": _field_name(tuple(err.get("loc", ()))), "message": err.get("msg", "")}
            for err in exc.errors()
        ]
        detail = "; ".join(f"{e['field']}: {e['message']}" for e in errors)
        return problem(422, "Invalid input", detail, errors=errors)

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        if isinstance(exc.__cause__, TailsynthError):  # e.g. the body-size limit, hit mid-parse
            cause = exc.__cause__
            return problem(cause.status, cause.title, cause.detail, **cause.extra)
        return problem(exc.status_code, _reason(exc.status_code), str(exc.detail))

    async def _unavailable(request: Request, exc: Exception) -> JSONResponse:
        # The type only: a connection error's text may carry a server's address or URL.
        log.warning(
            "%s %s: a backend is unreachable (%s)",
            request.method,
            request.url.path,
            type(exc).__name__,
        )
        response = problem(
            503,
            "Service unavailable",
            "the database, broker or object store "
            "is unreachable for now; retry after the time in Retry-After",
        )
        response.headers["Retry-After"] = str(RETRY_AFTER_S)
        return response

    for transient in TRANSIENT_ERRORS:  # a lost connection is not the request's fault
        if issubclass(transient, Exception):  # all are; says so to the type checker
            app.add_exception_handler(transient, _unavailable)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        reference = uuid.uuid4().hex[:12]
        log.exception("unhandled error %s on %s %s", reference, request.method, request.url.path)
        return problem(
            500, "Internal error", f"the server hit an unexpected error (reference {reference})"
        )
