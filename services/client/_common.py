"""What the sync and async clients share: settings from the environment, request bodies,
answers parsed into the API's own schemas, the wait loop's bookkeeping, upload progress."""

from __future__ import annotations

import logging
import os
import time
import uuid
from collections.abc import Callable, Mapping
from typing import IO, Any, TypeVar

import httpx
from pydantic import BaseModel
from pydantic_core import to_jsonable_python

from services.api.schemas import JobRead
from services.client.errors import ApiError, JobCanceled, JobFailed, WaitTimeout

log = logging.getLogger("tailsynth.client")

DEFAULT_URL = "http://127.0.0.1:8000"
FINAL_STATES = ("succeeded", "partial", "failed", "canceled")
DELIVERED_STATES = ("succeeded", "partial")

ID = uuid.UUID | str
Body = BaseModel | Mapping[str, Any] | None
M = TypeVar("M", bound=BaseModel)
JobCallback = Callable[[JobRead], None]
BytesCallback = Callable[[int, int | None], None]  # bytes done, total (None: unknown)


def resolve_connection(base_url: str | None, api_key: str | None) -> tuple[str, str | None]:
    """Flags first, then ``TAILSYNTH_URL`` / ``TAILSYNTH_API_KEY``, then the local default."""
    url = base_url or os.environ.get("TAILSYNTH_URL") or DEFAULT_URL
    key = api_key if api_key is not None else os.environ.get("TAILSYNTH_API_KEY")
    return url.rstrip("/"), key or None


def default_headers(api_key: str | None) -> dict[str, str]:
    headers = {"Accept": "application/json, application/problem+json;q=0.9, */*;q=0.1"}
    if api_key:
        headers["Authorization"] = f"Bearer {api_key}"
    return headers


def json_body(body: Body, fields: Mapping[str, Any]) -> Any:
    """A request model (only the fields set) or a mapping, updated with keyword fields,
    as JSON-ready data. Validation is the server's: its 422 names the field."""
    if isinstance(body, BaseModel):
        data: dict[str, Any] = body.model_dump(mode="json", exclude_unset=True)
    else:
        data = dict(body or {})
    data.update(fields)
    return to_jsonable_python(data)


def new_idempotency_key() -> str:
    return str(uuid.uuid4())


def parse(model: type[M], response: httpx.Response) -> M:
    return model.model_validate(response.json())


def raise_for_problem(response: httpx.Response) -> httpx.Response:
    if response.status_code >= 400:
        raise ApiError.from_response(response)
    return response


class WaitLoop:
    """A wait's bookkeeping, the same for both clients: call ``on_progress`` when the job
    changed (state, stage, done, total or percent; never twice for the same view), poll
    at ``poll_interval`` while it moves and back off to ``max_poll_interval`` while it
    does not, and end (return None) or raise once it is final or out of time.

    A poll that finds the server gone (after its own retries) or failing (5xx) is not
    the end of a wait of hours: polling goes on at ``max_poll_interval`` until the server
    has been away for ``outage_tolerance`` seconds (a restart, a deploy), then raises."""

    def __init__(
        self,
        timeout: float | None,
        poll_interval: float,
        max_poll_interval: float,
        on_progress: JobCallback | None,
        outage_tolerance: float = 600.0,
    ) -> None:
        self.timeout = timeout
        self.outage_tolerance = outage_tolerance
        self.outage_since: float | None = None
        self.deadline = None if timeout is None else time.monotonic() + timeout
        self.poll_interval = poll_interval
        self.max_poll_interval = max(poll_interval, max_poll_interval)
        self.interval = poll_interval
        self.on_progress = on_progress
        self.last: tuple[Any, ...] | None = None

    def outage(self, error: Exception) -> float:
        """Seconds to sleep after a poll that got no answer; re-raises ``error`` once the
        server has been away longer than the tolerance (or the wait is out of time)."""
        now = time.monotonic()
        if self.outage_since is None:
            self.outage_since = now
            log.warning(
                "polling the job failed (%s); polling on for up to %.0f s",
                error,
                self.outage_tolerance,
            )
        if now - self.outage_since >= self.outage_tolerance:
            raise error
        if self.deadline is not None and now >= self.deadline:
            raise error
        return self.max_poll_interval

    def observe(self, job: JobRead) -> float | None:
        """Seconds to sleep before the next poll, or None when the job delivered."""
        self.outage_since = None
        p = job.progress
        view = (job.state, job.stage, p.done, p.total, p.percent)
        if view != self.last:
            self.last = view
            self.interval = self.poll_interval
            if self.on_progress is not None:
                self.on_progress(job)
        else:
            self.interval = min(self.interval * 1.5, self.max_poll_interval)
        if job.state in DELIVERED_STATES:
            return None
        if job.state == "canceled":
            raise JobCanceled(job)
        if job.state in FINAL_STATES:
            raise JobFailed(job)
        if self.deadline is None:
            return self.interval
        left = self.deadline - time.monotonic()
        if left <= 0:
            assert self.timeout is not None
            raise WaitTimeout(job, self.timeout)
        return min(self.interval, left)


class ProgressReader:
    """A binary file that reports how much of it was read (an upload's progress).

    httpx reads multipart files in chunks and seeks to 0 before each attempt, which
    starts the count again on a retry."""

    def __init__(self, handle: IO[bytes], total: int, callback: BytesCallback | None) -> None:
        self._handle = handle
        self.total = total
        self.done = 0
        self._callback = callback

    def read(self, size: int = -1) -> bytes:
        chunk = self._handle.read(size)
        self.done += len(chunk)
        if self._callback is not None and chunk:
            self._callback(self.done, self.total)
        return chunk

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        position = self._handle.seek(offset, whence)
        self.done = position
        return position

    def tell(self) -> int:
        return self._handle.tell()

    def fileno(self) -> int:
        return self._handle.fileno()
