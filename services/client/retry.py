"""When and how long to retry: tenacity, configured once for the sync and async clients.

Retried: connection errors (refused, reset, timed out, dropped before the answer) and
answers 429, 502, 503, 504. The wait is exponential with full jitter, or what the
server's ``Retry-After`` says (seconds or an HTTP date), capped. POSTs are safe to retry
because each logical call sends one ``Idempotency-Key`` across all its attempts: the
server answers a repeat with the job the first attempt made.
"""

from __future__ import annotations

import email.utils
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import httpx
from tenacity import (
    RetryCallState,
    retry_if_exception_type,
    retry_if_result,
    stop_after_attempt,
    wait_random_exponential,
)

log = logging.getLogger("tailsynth.client")

RETRY_STATUSES = frozenset({429, 502, 503, 504})


def retry_after_seconds(response: httpx.Response, *, now: float | None = None) -> float | None:
    """The answer's ``Retry-After`` in seconds (from delta-seconds or an HTTP date), or None."""
    value = response.headers.get("Retry-After")
    if value is None:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        moment = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    current = datetime.now(UTC).timestamp() if now is None else now
    return max(0.0, moment.timestamp() - current)


def _retryable_statuses(accept: frozenset[int]) -> Callable[[Any], bool]:
    statuses = RETRY_STATUSES - accept

    def retryable(result: Any) -> bool:
        return isinstance(result, httpx.Response) and result.status_code in statuses

    return retryable


@dataclass(frozen=True)
class RetryPolicy:
    """How many times and how long.

    ``max_retries`` retries after the first attempt (0: none). Waits are
    ``uniform(0, min(max_backoff, backoff * 2**n))`` seconds, or the server's
    ``Retry-After`` up to ``max_retry_after``. With the defaults a dead server is given
    up on after 6 attempts within about 30 s.
    """

    max_retries: int = 5
    backoff: float = 0.5
    max_backoff: float = 10.0
    max_retry_after: float = 120.0
    sleep: Callable[[float], Any] = field(default=time.sleep, compare=False)

    def wait(self, state: RetryCallState) -> float:
        outcome = state.outcome
        if outcome is not None and not outcome.failed:
            response = outcome.result()
            if isinstance(response, httpx.Response):
                told = retry_after_seconds(response)
                if told is not None:
                    return min(told, self.max_retry_after)
        jitter = wait_random_exponential(multiplier=self.backoff, max=self.max_backoff)
        return float(jitter(state))

    def tenacity_kwargs(self, accept: frozenset[int] = frozenset()) -> dict[str, Any]:
        """Arguments for ``tenacity.Retrying`` / ``AsyncRetrying``: retry transport errors
        and retryable statuses (except those in ``accept``, answers the caller wants);
        when the budget is spent, re-raise the last error or return the last answer
        (which the caller turns into an :class:`ApiError`)."""
        return {
            "retry": retry_if_exception_type(httpx.TransportError)
            | retry_if_result(_retryable_statuses(accept)),
            "wait": self.wait,
            "stop": stop_after_attempt(self.max_retries + 1),
            "before_sleep": _log_retry,
            "retry_error_callback": _last_outcome,
        }


def _last_outcome(state: RetryCallState) -> Any:
    assert state.outcome is not None
    return state.outcome.result()  # re-raises the last exception, if it was one


def _log_retry(state: RetryCallState) -> None:
    outcome = state.outcome
    assert outcome is not None
    if outcome.failed:
        reason = repr(outcome.exception())
    else:
        reason = f"HTTP {outcome.result().status_code}"
    wait = state.next_action.sleep if state.next_action else 0.0
    log.warning("attempt %d failed (%s); retrying in %.1fs", state.attempt_number, reason, wait)
