"""Job events for webhook endpoints: the one hook :mod:`shared.jobs` calls when a job
starts, moves on or ends (:func:`job_event`).

The hook writes one delivery row per subscribed endpoint in the caller's transaction,
with the exact body every attempt will sign and send; the ``webhooks`` queue's task is
sent only after that transaction commits, so a worker never waits on a receiver and a
rolled-back change announces nothing. Delivery, signing and retries live in
:mod:`services.webhooks.delivery`; a delivery whose send was lost is sent again by the
API's reaper (:func:`services.webhooks.delivery.sweep`).

Event body (Standard Webhooks layout)::

    {"id": "evt_...", "type": "job.succeeded", "timestamp": "<RFC 3339>", "data": <job>}

where ``data`` is what ``GET /v1/jobs/{id}`` answers. A job that ends ``partial`` sends
``job.succeeded`` (it finished; ``data.state`` says ``partial``).
"""

from __future__ import annotations

import json
import logging
import threading
import time
import uuid
from typing import Any, Final

from celery import Celery
from sqlalchemy import event, func, or_, select
from sqlalchemy.orm import Session, sessionmaker

from shared.celery_app import WEBHOOK_QUEUE
from shared.models import Job, JobState, WebhookDelivery, WebhookEndpoint, utcnow
from shared.runtime import get_runtime
from shared.settings import get_settings
from shared.timestamps import rfc3339

log = logging.getLogger(__name__)

JOB_STARTED: Final = "job.started"
JOB_PROGRESS: Final = "job.progress"
JOB_SUCCEEDED: Final = "job.succeeded"
JOB_FAILED: Final = "job.failed"
JOB_CANCELED: Final = "job.canceled"
EVENT_TYPES: tuple[str, ...] = (JOB_STARTED, JOB_PROGRESS, JOB_SUCCEEDED, JOB_FAILED, JOB_CANCELED)

#: The event a job's final state sends.
FINAL_EVENTS: dict[JobState, str] = {
    JobState.SUCCEEDED: JOB_SUCCEEDED,
    JobState.PARTIAL: JOB_SUCCEEDED,
    JobState.FAILED: JOB_FAILED,
    JobState.CANCELED: JOB_CANCELED,
}

DELIVER_TASK: Final = "tailsynth.deliver_webhook"

_PENDING_SENDS = "tailsynth.webhook_deliveries"
_CELERY = "tailsynth.celery"
#: Job id -> when this process last looked at whether a job.progress event is due.
_progress_checked: dict[uuid.UUID, float] = {}
_progress_lock = threading.Lock()


def job_event(session: Session, job: Job | uuid.UUID, event_type: str) -> None:
    """Record ``event_type`` of ``job`` for every endpoint that subscribed to it (the
    tenant's endpoints, and the one the job's POST named), in the caller's transaction.

    ``job.progress`` may be given the job's id: it is throttled here (at most one event
    per ``webhook_progress_interval_s``, and only when the job reached a new 10 % step)
    and the row is read only when one may be due. Never raises: an event must not fail
    the job it reports on.
    """
    job_id = job if isinstance(job, uuid.UUID) else job.id
    if event_type == JOB_PROGRESS and not _progress_check_due(job_id):
        return
    try:
        with session.begin_nested():  # a failure here leaves the job's own change intact
            _record(session, job, event_type)
    except Exception:
        log.exception("job %s: recording webhook event %s failed", job_id, event_type)


def _record(session: Session, job: Job | uuid.UUID, event_type: str) -> None:
    if isinstance(job, uuid.UUID):
        found = session.get(Job, job)
        if found is None:
            return
        job = found
    endpoints = [
        endpoint
        for endpoint in session.scalars(
            select(WebhookEndpoint).where(
                WebhookEndpoint.tenant_id == job.tenant_id,
                or_(WebhookEndpoint.job_id.is_(None), WebhookEndpoint.job_id == job.id),
            )
        )
        if event_type in (endpoint.events or EVENT_TYPES)
    ]
    if not endpoints:
        return
    data = _job_json(job)
    step: int | None = None
    if event_type == JOB_PROGRESS:
        step = int(data["progress"]["percent"] // 10)
        if step < 1 or step >= 10 or not _progress_step_due(session, job.id, step):
            return
    event_id = f"evt_{uuid.uuid4().hex}"
    now = utcnow()
    body = json.dumps(
        {
            "id": event_id,
            "type": event_type,
            "timestamp": rfc3339(now),  # the API's one format (shared.timestamps)
            "data": data,
        },
        separators=(",", ":"),
    )
    deliveries = [
        WebhookDelivery(
            endpoint_id=endpoint.id,
            event_id=event_id,
            event_type=event_type,
            job_id=job.id,
            progress_step=step,
            body=body,
            state="pending",
            attempts=0,
            next_attempt_at=now,
            dispatched_at=now,  # sent after commit; the reaper sends it again if that is lost
        )
        for endpoint in endpoints
    ]
    session.add_all(deliveries)
    session.flush()
    _send_after_commit(session, [delivery.id for delivery in deliveries])


def _job_json(job: Job) -> dict[str, Any]:
    """What ``GET /v1/jobs/{id}`` answers for ``job``, as JSON values."""
    # Imported here: the API's schemas import shared.jobs, which imports this module.
    from services.api.schemas import JobRead

    session = Session.object_session(job)
    if session is not None:
        session.flush()  # timestamps set on flush (updated_at) are then read back
    return JobRead.of(job).model_dump(mode="json")


def _progress_check_due(job_id: uuid.UUID) -> bool:
    """Whether this process may look at ``job_id``'s progress again (at most once per
    ``webhook_progress_interval_s``; progress reports come every step)."""
    interval = get_settings().webhook_progress_interval_s
    now = time.monotonic()
    with _progress_lock:
        if len(_progress_checked) > 10_000:
            _progress_checked.clear()
        if now - _progress_checked.get(job_id, -1e12) < interval:
            return False
        _progress_checked[job_id] = now
    return True


def _progress_step_due(session: Session, job_id: uuid.UUID, step: int) -> bool:
    """Whether a job.progress event for ``step`` may be sent: a higher step than the
    last one sent for the job, and the interval since it passed (the job's stages may
    run in other processes, so the record decides)."""
    last_step, last_at = session.execute(
        select(func.max(WebhookDelivery.progress_step), func.max(WebhookDelivery.created_at)).where(
            WebhookDelivery.job_id == job_id, WebhookDelivery.event_type == JOB_PROGRESS
        )
    ).one()
    if last_step is not None and step <= last_step:
        return False
    if last_at is None:
        return True
    if last_at.tzinfo is None:  # SQLite gives naive UTC
        last_at = last_at.replace(tzinfo=utcnow().tzinfo)
    interval = get_settings().webhook_progress_interval_s
    return bool((utcnow() - last_at).total_seconds() >= interval)


# ----------------------------------------------------------------- sending after commit


def _send_after_commit(session: Session, delivery_ids: list[uuid.UUID]) -> None:
    session.info.setdefault(_PENDING_SENDS, []).extend(delivery_ids)
    if not event.contains(session, "after_commit", _send_pending):
        event.listen(session, "after_commit", _send_pending)
        event.listen(session, "after_rollback", _forget_pending)


def _forget_pending(session: Session) -> None:
    if session.get_nested_transaction() is None:  # the whole transaction, not a savepoint
        session.info.pop(_PENDING_SENDS, None)


def attach_celery(factory: sessionmaker[Session], celery: Celery) -> None:
    """Send the deliveries that sessions of ``factory`` record through ``celery`` (the
    API's app). Sessions without one (a worker's) use the worker's runtime app."""
    factory.configure(info={**factory.kw.get("info", {}), _CELERY: celery})


def _send_pending(session: Session) -> None:
    """After commit: send each new delivery to the ``webhooks`` queue. A failed send is
    left to the reaper's sweep."""
    if session.get_nested_transaction() is not None:
        # SQLAlchemy calls this when a SAVEPOINT is released too (job_event's own): the
        # rows are not visible to the worker until the enclosing transaction commits.
        return
    delivery_ids = session.info.pop(_PENDING_SENDS, [])
    if not delivery_ids:
        return
    try:
        celery = session.info.get(_CELERY)
        if celery is None:  # a worker's session: its settings, its app
            celery = get_runtime().celery
        for delivery_id in delivery_ids:
            celery.send_task(DELIVER_TASK, args=[str(delivery_id)], queue=WEBHOOK_QUEUE)
    except Exception:
        log.warning("webhook deliveries %s: not sent now; the reaper will", delivery_ids)
