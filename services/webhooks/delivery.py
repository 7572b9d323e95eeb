"""One delivery attempt: sign, send, record, and schedule the next try.

Signing is the Standard Webhooks scheme (the ``standardwebhooks`` package):
``webhook-id`` (the event id, the same on every retry, so a receiver de-duplicates by
it), ``webhook-timestamp`` (Unix seconds of this attempt) and ``webhook-signature``
(``v1,<base64 HMAC-SHA256 over "id.timestamp.body">`` with the endpoint's secret).

An attempt is refused before connecting when the URL's host now resolves to an address
that may not receive webhooks, and it connects to the address it checked. Redirects are
not followed: a 3xx is a failed attempt that names where it pointed. Failed attempts are
retried after ``webhook_retry_schedule_s`` (30 s ... 8 h by default); retries due soon
are sent by the worker with a countdown, later ones by the API's reaper (:func:`sweep`).
"""

from __future__ import annotations

import logging
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, cast

import httpx
from celery import Celery
from sqlalchemy import CursorResult, or_, select, update
from sqlalchemy.orm import Session, sessionmaker
from standardwebhooks import Webhook

from services.webhooks.targets import IPAddress, TargetRefused, resolve_target
from shared.models import WebhookAttempt, WebhookDelivery, WebhookEndpoint, utcnow
from shared.settings import Settings
from shared.webhooks import DELIVER_TASK, WEBHOOK_QUEUE

log = logging.getLogger(__name__)

USER_AGENT = "tailsynth-webhooks/1"
#: Characters of a receiver's answer or an error kept on an attempt.
_ERROR_CHARS = 500


def signature_headers(
    secret: str, event_id: str, body: str, at: datetime | None = None
) -> dict[str, str]:
    """The three Standard Webhooks headers for ``body`` sent now (or ``at``)."""
    moment = (at or datetime.now(UTC)).replace(microsecond=0)
    return {
        "webhook-id": event_id,
        "webhook-timestamp": str(int(moment.timestamp())),
        "webhook-signature": Webhook(secret).sign(event_id, moment, body),
    }


@dataclass(frozen=True)
class AttemptResult:
    status_code: int | None
    error: str | None
    duration_ms: float

    @property
    def delivered(self) -> bool:
        return self.error is None


@dataclass(frozen=True)
class _Answer:
    status_code: int
    location: str
    text: str


def _post(
    url: str, address: IPAddress, headers: dict[str, str], body: str, timeout_s: float
) -> _Answer:
    """POST to ``url`` at ``address`` (checked already): the Host header and the TLS
    server name stay the URL's host; no proxy from the environment, no redirects. Reads
    at most the first KiB of the answer (a receiver's body is only shown in errors)."""
    target = httpx.URL(url)
    extensions: dict[str, Any] = {}
    if target.scheme == "https":
        extensions["sni_hostname"] = target.host
    with (
        httpx.Client(follow_redirects=False, timeout=timeout_s, trust_env=False) as client,
        client.stream(
            "POST",
            target.copy_with(host=str(address)),
            content=body.encode(),
            headers={
                **headers,
                "host": target.netloc.decode("ascii"),
                "content-type": "application/json",
                "user-agent": USER_AGENT,
            },
            extensions=extensions,
        ) as response,
    ):
        head = b""
        for chunk in response.iter_bytes():
            head += chunk
            if len(head) >= 1024:
                break
        return _Answer(
            response.status_code,
            response.headers.get("location", ""),
            head[:1024].decode("utf-8", errors="replace"),
        )


def attempt(url: str, secret: str, event_id: str, body: str, settings: Settings) -> AttemptResult:
    """Send ``body`` to ``url`` once; never raises for the receiver's faults."""
    started = time.monotonic()
    status_code: int | None = None
    error: str | None = None
    try:
        address = resolve_target(url, settings)
        answer = _post(
            url,
            address,
            signature_headers(secret, event_id, body),
            body,
            settings.webhook_timeout_s,
        )
        status_code = answer.status_code
        if 300 <= status_code < 400:
            error = (
                f"receiver answered {status_code} redirecting to {answer.location[:300]!r}; "
                "redirects are not followed: point the endpoint at the final URL"
            )
        elif not 200 <= status_code < 300:
            error = f"receiver answered {status_code}: {answer.text[:200]!r}"
    except TargetRefused as exc:
        error = f"refused: {exc}"
    except httpx.HTTPError as exc:
        error = f"{type(exc).__name__}: {exc}"
    except Exception as exc:  # recorded like any failure, so the schedule still ends
        log.exception("webhook %s: attempt to %s failed unexpectedly", event_id, url)
        error = f"internal error: {type(exc).__name__}"
    duration_ms = round((time.monotonic() - started) * 1000, 1)
    return AttemptResult(status_code, None if error is None else error[:_ERROR_CHARS], duration_ms)


def deliver(
    factory: sessionmaker[Session], delivery_id: uuid.UUID, settings: Settings
) -> float | None:
    """Make the next attempt of a due delivery and record it.

    A delivery already delivered, given up, not yet due, or held by another attempt is
    left alone (a duplicate or early message). Returns the seconds until the next
    attempt when the caller should send it with a countdown (within
    ``webhook_countdown_max_s``), else None.
    """
    now = utcnow()
    with factory.begin() as session:
        claimed = cast(
            CursorResult[Any],
            session.execute(
                update(WebhookDelivery)
                .where(
                    WebhookDelivery.id == delivery_id,
                    WebhookDelivery.state == "pending",
                    WebhookDelivery.next_attempt_at <= now + timedelta(seconds=1),
                    or_(WebhookDelivery.lease_until.is_(None), WebhookDelivery.lease_until < now),
                )
                .values(
                    attempts=WebhookDelivery.attempts + 1,
                    lease_until=now + timedelta(seconds=3 * settings.webhook_timeout_s + 30),
                )
                .execution_options(synchronize_session=False)
            ),
        ).rowcount
        if claimed != 1:
            log.info("webhook delivery %s: not due or held elsewhere; message dropped", delivery_id)
            return None
        delivery = session.get(WebhookDelivery, delivery_id)
        endpoint = session.get(WebhookEndpoint, delivery.endpoint_id) if delivery else None
        if delivery is None or endpoint is None:
            return None
        number, url, secret = delivery.attempts, endpoint.url, endpoint.secret
        event_id, body = delivery.event_id, delivery.body

    result = attempt(url, secret, event_id, body, settings)

    schedule = settings.webhook_retry_schedule_s
    delay: float | None = None
    with factory.begin() as session:
        delivery = session.get(WebhookDelivery, delivery_id, with_for_update=True)
        if delivery is None:  # its endpoint was deleted meanwhile
            return None
        done = utcnow()
        next_retry_at = None
        if result.delivered:
            delivery.state = "succeeded"
        elif number > len(schedule):
            delivery.state = "failed"
            log.warning("webhook delivery %s: gave up after %d attempts", delivery_id, number)
        else:
            delay = schedule[number - 1]
            next_retry_at = done + timedelta(seconds=delay)
            # A retry due soon is sent now with a countdown; a later one by the reaper.
            delivery.dispatched_at = done if delay <= settings.webhook_countdown_max_s else None
        delivery.next_attempt_at = next_retry_at
        delivery.lease_until = None
        session.add(
            WebhookAttempt(
                delivery_id=delivery_id,
                attempt=number,
                status_code=result.status_code,
                error=result.error,
                duration_ms=result.duration_ms,
                next_retry_at=next_retry_at,
            )
        )
    if delay is not None and delay <= settings.webhook_countdown_max_s:
        return delay
    return None


def send(celery: Celery, delivery_id: uuid.UUID | str, countdown: float | None = None) -> None:
    celery.send_task(
        DELIVER_TASK, args=[str(delivery_id)], queue=WEBHOOK_QUEUE, countdown=countdown
    )


def sweep(
    celery: Celery, factory: sessionmaker[Session], settings: Settings, limit: int = 500
) -> int:
    """Send the deliveries that are due and not sent (a retry hours away, a send lost to a
    broker outage or a crash). Returns how many were sent."""
    now = utcnow()
    with factory.begin() as session:
        due = list(
            session.scalars(
                select(WebhookDelivery.id)
                .where(
                    WebhookDelivery.state == "pending",
                    WebhookDelivery.next_attempt_at <= now,
                    or_(
                        WebhookDelivery.dispatched_at.is_(None),
                        WebhookDelivery.dispatched_at
                        < now - timedelta(seconds=settings.webhook_redispatch_s),
                    ),
                    or_(WebhookDelivery.lease_until.is_(None), WebhookDelivery.lease_until < now),
                )
                .order_by(WebhookDelivery.next_attempt_at)
                .limit(limit)
            )
        )
        if due:
            session.execute(
                update(WebhookDelivery)
                .where(WebhookDelivery.id.in_(due))
                .values(dispatched_at=now)
                .execution_options(synchronize_session=False)
            )
    for delivery_id in due:
        send(celery, delivery_id)
    return len(due)
