"""What the client raises: one type per thing a caller (or a CI step) handles differently.

Every error the API answers is an :class:`ApiError` carrying its problem+json body
(``status``, ``title``, ``detail``, ``field``); the subclasses say which kind it is, so
``except NotFound`` reads as what it means. Errors about the job, not the request
(:class:`JobFailed`, :class:`JobCanceled`, :class:`WaitTimeout`), and about the network
(:class:`ServerUnreachable`) are not API errors: the server never said them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import httpx

if TYPE_CHECKING:
    from services.api.schemas import JobRead


class TailsynthClientError(Exception):
    """Base of everything the client raises on purpose."""


class ApiError(TailsynthClientError):
    """The API answered 4xx/5xx. ``body`` is its problem+json document (or ``None`` when
    the answer was not JSON, e.g. from a proxy); ``field`` names the request field at
    fault when the server said which (the first of ``errors`` for a validation error)."""

    def __init__(
        self,
        status: int,
        title: str,
        detail: str,
        *,
        field: str | None = None,
        errors: list[dict[str, Any]] | None = None,
        body: dict[str, Any] | None = None,
    ) -> None:
        self.status = status
        self.title = title
        self.detail = detail
        self.field = field
        self.errors = errors or []
        self.body = body
        where = f" (field {field})" if field else ""
        super().__init__(f"HTTP {status} {title}: {detail}{where}")

    @classmethod
    def from_response(cls, response: httpx.Response) -> ApiError:
        """The typed error for a 4xx/5xx answer (the response body must have been read)."""
        body: dict[str, Any] | None = None
        try:
            parsed = response.json()
            body = parsed if isinstance(parsed, dict) else None
        except ValueError:
            pass
        status = response.status_code
        if body is not None:
            detail = str(body.get("detail") or response.reason_phrase)
            title = str(body.get("title") or response.reason_phrase)
            errors = [e for e in body.get("errors") or [] if isinstance(e, dict)]
            field = body.get("field") or (errors[0].get("field") if errors else None)
        else:  # not problem+json, e.g. a proxy's HTML page: its first 500 characters
            detail = response.text.strip()[:500] or response.reason_phrase
            title, errors, field = response.reason_phrase, [], None
        kind = _BY_STATUS.get(status) or (ServerError if status >= 500 else ApiError)
        return kind(status, title, detail, field=field, errors=errors, body=body)


class InvalidRequest(ApiError):
    """400, 413 or 422: the request is wrong; ``field`` says where when the server knows."""


class AuthError(ApiError):
    """401 or 403: no key, a wrong key or a revoked one."""


class NotFound(ApiError):
    """404: no such id, or it belongs to another tenant."""


class Conflict(ApiError):
    """409: not ready yet (a curated set whose job runs) or already final (a job)."""


class RateLimited(ApiError):
    """429 after the retry budget was spent."""


class ServerError(ApiError):
    """5xx: the server failed (after the retry budget, for 502/503/504)."""


_BY_STATUS: dict[int, type[ApiError]] = {
    400: InvalidRequest,
    401: AuthError,
    403: AuthError,
    404: NotFound,
    409: Conflict,
    413: InvalidRequest,
    422: InvalidRequest,
    429: RateLimited,
}


class ServerUnreachable(TailsynthClientError):
    """No answer from the server after the retry budget (connection refused, reset,
    timed out, or dropped before the answer came)."""

    def __init__(self, url: str, attempts: int, cause: BaseException) -> None:
        self.url = url
        self.attempts = attempts
        self.cause = cause
        reason = str(cause) or type(cause).__name__
        super().__init__(f"server at {url} unreachable after {attempts} attempt(s): {reason}")


class JobFailed(TailsynthClientError):
    """The job ended ``failed`` (or ``canceled``: :class:`JobCanceled` is a subclass, so
    one ``except JobFailed`` catches every job that did not deliver). ``job`` is its last
    state, ``job.error`` the server's reason."""

    def __init__(self, job: JobRead) -> None:
        self.job = job
        super().__init__(f"job {job.id} {job.state}: {job.error or job.stage}")


class JobCanceled(JobFailed):
    """The job was canceled; work finished before the cancel is kept on the server."""


class WaitTimeout(TailsynthClientError, TimeoutError):
    """``wait`` gave up before the job ended; the job itself goes on."""

    def __init__(self, job: JobRead, timeout: float) -> None:
        self.job = job
        self.timeout = timeout
        super().__init__(
            f"job {job.id} still {job.state} ({job.stage}, {job.progress.percent:.0f}%) "
            f"after {timeout:g}s; it goes on running"
        )


class DownloadError(TailsynthClientError):
    """A download ended but its bytes do not match what the server said they are."""
