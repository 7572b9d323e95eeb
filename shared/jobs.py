"""The job system: rows first, then tasks; progress, cancel, and a reaper.

A job row is committed before its task is sent (:func:`dispatch`). If the process
dies between the two, the row stays with ``dispatched_at`` empty and the reaper sends
it later (:func:`reap`). The reaper also re-sends a running job whose heartbeat has
gone stale (its worker died) — safe because every task is idempotent.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from celery import Celery
from sqlalchemy import select, update
from sqlalchemy.orm import Session, sessionmaker

from shared.celery_app import TASK_QUEUES
from shared.errors import Conflict, TailsynthError
from shared.models import Job, JobState, utcnow

log = logging.getLogger(__name__)

#: A work result with ``{PARTIAL: True}`` ends its job ``partial`` instead of
#: ``succeeded``: it finished, but some part of it could not be served (the result says
#: which, e.g. a synthesis class without real training images).
PARTIAL = "partial"


class JobCanceled(Exception):
    """Raised inside a task when the user asked to cancel; finished work is kept."""


@dataclass(frozen=True)
class NextStage:
    """Returned by a task's work to hand the same job to another queue's task.

    A synthesis job generates on the ``generate`` queue (GPU), then filters on the
    ``filter`` queue; the job keeps one id, one progress record and one state.
    """

    task_name: str
    stage: str
    result: dict[str, Any] = field(default_factory=dict)


def create_job(
    session: Session,
    *,
    tenant_id: uuid.UUID,
    kind: str,
    task_name: str,
    params: dict[str, Any] | None = None,
    total: int = 0,
) -> Job:
    """Add a queued job to ``session`` (the caller commits, then calls :func:`dispatch`)."""
    job = Job(
        tenant_id=tenant_id,
        kind=kind,
        task_name=task_name,
        queue=TASK_QUEUES[task_name],
        params=params or {},
        total=total,
        state=JobState.QUEUED,
        stage="queued",
    )
    session.add(job)
    session.flush()
    return job


def dispatch(celery: Celery, factory: sessionmaker[Session], job_id: uuid.UUID) -> None:
    """Send the task of a committed job and record that the broker took it."""
    with factory() as session:
        job = session.get(Job, job_id)
        if job is None or job.state.is_final:
            return
        celery.send_task(job.task_name, args=[str(job.id)], queue=job.queue)
        job.dispatched_at = utcnow()
        session.commit()


def request_cancel(session: Session, job: Job) -> Job:
    """Cancel: a queued job ends at once; a running one stops at its next checkpoint."""
    if job.state.is_final:
        raise Conflict(f"job {job.id} is already {job.state.value}; nothing to cancel")
    if job.state == JobState.QUEUED:
        job.state = JobState.CANCELED
        job.stage = "canceled"
        job.finished_at = utcnow()
    job.cancel_requested = True
    return job


def reap(
    celery: Celery, factory: sessionmaker[Session], *, lease_s: int, grace_s: float = 5.0
) -> int:
    """Send jobs a crash left unsent, and re-send running jobs whose worker went silent.

    Returns how many tasks were sent. Safe to run from several processes at once:
    a doubled send only re-runs an idempotent task.
    """
    now = utcnow()
    stale = now - timedelta(seconds=lease_s)
    with factory() as session:
        unsent = select(Job.id).where(
            Job.state == JobState.QUEUED,
            Job.dispatched_at.is_(None),
            Job.created_at < now - timedelta(seconds=grace_s),
        )
        lost = select(Job.id).where(
            ((Job.state == JobState.RUNNING) & (Job.heartbeat_at < stale))
            | ((Job.state == JobState.QUEUED) & (Job.dispatched_at < stale))
        )
        job_ids = list(session.scalars(unsent)) + list(session.scalars(lost))
    for job_id in job_ids:
        log.warning("reaper: (re)sending job %s", job_id)
        dispatch(celery, factory, job_id)
    return len(job_ids)


@dataclass
class JobContext:
    """What a running task uses to report progress and notice a cancel request.

    Each report is its own short transaction, so progress is visible while the task's
    work goes on, and doubles as the heartbeat the reaper watches.
    """

    job_id: uuid.UUID
    factory: sessionmaker[Session]
    params: dict[str, Any] = field(default_factory=dict)
    attempts: int = 0
    cancel_poll_s: float = 0.5
    _cancel_checked_at: float = field(default=-1e9, repr=False)
    _cancel_requested: bool = field(default=False, repr=False)
    _heartbeat_at: float = field(default=-1e9, repr=False)

    def progress(self, done: int, total: int | None = None, stage: str | None = None) -> None:
        values: dict[str, Any] = {"done": done, "heartbeat_at": utcnow()}
        if total is not None:
            values["total"] = total
        if stage is not None:
            values["stage"] = stage
        with self.factory.begin() as session:
            session.execute(update(Job).where(Job.id == self.job_id).values(**values))

    def heartbeat(self, *_: object) -> None:
        """Tell the reaper the job is alive without touching its progress (at most every
        ``cancel_poll_s`` x 10 seconds); usable directly as a ``progress`` callback."""
        now = time.monotonic()
        if now - self._heartbeat_at >= 10 * self.cancel_poll_s:
            self._heartbeat_at = now
            with self.factory.begin() as session:
                session.execute(
                    update(Job).where(Job.id == self.job_id).values(heartbeat_at=utcnow())
                )

    def should_cancel(self) -> bool:
        """Whether the user asked to cancel; reads the row at most every ``cancel_poll_s``."""
        now = time.monotonic()
        if not self._cancel_requested and now - self._cancel_checked_at >= self.cancel_poll_s:
            self._cancel_checked_at = now
            with self.factory() as session:
                self._cancel_requested = bool(
                    session.scalar(select(Job.cancel_requested).where(Job.id == self.job_id))
                )
        return self._cancel_requested

    def check_cancel(self) -> None:
        if self.should_cancel():
            raise JobCanceled()


def run_job(
    factory: sessionmaker[Session],
    job_id: str,
    work: Callable[[JobContext], dict[str, Any] | NextStage],
    *,
    celery: Celery | None = None,
) -> None:
    """Run ``work`` for a job, moving it through its states. Idempotent per job.

    A job already final is left alone (a duplicate delivery); a job already running is
    resumed (its worker died and the task came back); ``work`` must itself skip what
    an earlier attempt finished and recorded. A result with a true :data:`PARTIAL` key
    ends the job ``partial`` rather than ``succeeded``.
    """
    jid = uuid.UUID(job_id)
    with factory.begin() as session:
        job = session.get(Job, jid, with_for_update=True)
        if job is None:
            log.error("task for unknown job %s dropped", job_id)
            return
        if job.state.is_final:
            log.info("job %s already %s; duplicate delivery ignored", job_id, job.state.value)
            return
        if job.cancel_requested:
            _finish(job, JobState.CANCELED, "canceled")
            return
        job.state = JobState.RUNNING
        job.attempts += 1
        job.started_at = job.started_at or utcnow()
        job.heartbeat_at = utcnow()
        if job.stage == "queued":
            job.stage = "starting"
        ctx = JobContext(
            job_id=jid, factory=factory, params=dict(job.params), attempts=job.attempts
        )
    try:
        result = work(ctx)
    except JobCanceled:
        _end(factory, jid, JobState.CANCELED, "canceled")
    except TailsynthError as exc:
        _end(factory, jid, JobState.FAILED, "failed", error=exc.detail)
    except Exception as exc:
        log.exception("job %s failed", job_id)
        _end(factory, jid, JobState.FAILED, "failed", error=f"internal error: {type(exc).__name__}")
        raise
    else:
        if isinstance(result, NextStage):
            _hand_over(factory, jid, result, celery)
        else:
            state = JobState.PARTIAL if result.get(PARTIAL) else JobState.SUCCEEDED
            _end(factory, jid, state, "done", result=result)


def _hand_over(
    factory: sessionmaker[Session], job_id: uuid.UUID, stage: NextStage, celery: Celery | None
) -> None:
    if celery is None:
        raise RuntimeError("a task that hands over to another stage needs the Celery app")
    with factory.begin() as session:
        job = session.get(Job, job_id, with_for_update=True)
        if job is None:
            return
        job.task_name = stage.task_name
        job.queue = TASK_QUEUES[stage.task_name]
        job.stage = stage.stage
        job.result = {**job.result, **stage.result}
        job.heartbeat_at = utcnow()
        job.dispatched_at = None  # the reaper sends it if the send below is lost
    dispatch(celery, factory, job_id)


def _finish(job: Job, state: JobState, stage: str) -> None:
    job.state = state
    job.stage = stage
    job.finished_at = utcnow()


def _end(
    factory: sessionmaker[Session],
    job_id: uuid.UUID,
    state: JobState,
    stage: str,
    *,
    error: str | None = None,
    result: dict[str, Any] | None = None,
) -> None:
    with factory.begin() as session:
        job = session.get(Job, job_id, with_for_update=True)
        if job is None:
            return
        _finish(job, state, stage)
        job.error = error
        if result is not None:
            job.result = {**job.result, **result}
            if job.total and state in (JobState.SUCCEEDED, JobState.PARTIAL):
                job.done = job.total


@contextmanager
def mark_on_failure(
    factory: sessionmaker[Session], model: type[Any], row_id: uuid.UUID, *, failed: str = "failed"
) -> Iterator[None]:
    """Set ``model.state`` of ``row_id`` to ``failed`` (or "canceled") if the block raises,
    so a generator or curated set never stays "training" / "pending" after its job ended."""
    try:
        yield
    except BaseException as exc:
        state = "canceled" if isinstance(exc, JobCanceled) else failed
        with factory.begin() as session:
            session.execute(update(model).where(model.id == row_id).values(state=state))
        raise


def guarded(
    factory: sessionmaker[Session],
    model: type[Any],
    id_param: str,
    work: Callable[[JobContext], dict[str, Any] | NextStage],
) -> Callable[[JobContext], dict[str, Any] | NextStage]:
    """``work`` wrapped so that the row named by ``ctx.params[id_param]`` ends "failed" or
    "canceled" with its job (see :func:`mark_on_failure`)."""

    def wrapped(ctx: JobContext) -> dict[str, Any] | NextStage:
        with mark_on_failure(factory, model, uuid.UUID(ctx.params[id_param])):
            return work(ctx)

    return wrapped
