"""One domain error type carrying its HTTP status, rendered once as problem+json."""

from __future__ import annotations

from typing import Any


class TailsynthError(Exception):
    """An error a user can act on. ``status`` is the HTTP status the API answers with."""

    status: int = 400
    title: str = "Bad request"

    def __init__(self, detail: str, *, status: int | None = None, **extra: Any) -> None:
        super().__init__(detail)
        self.detail = detail
        if status is not None:
            self.status = status
        self.extra = extra  # e.g. field="counts.DF", row=12, file="img/a.png"


class NotFound(TailsynthError):
    status = 404
    title = "Not found"


class Conflict(TailsynthError):
    status = 409
    title = "Conflict"


class InvalidInput(TailsynthError):
    status = 422
    title = "Invalid input"


class PayloadTooLarge(TailsynthError):
    status = 413
    title = "Payload too large"


class Unauthorized(TailsynthError):
    status = 401
    title = "Unauthorized"
